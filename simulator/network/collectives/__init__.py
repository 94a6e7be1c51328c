"""Collective algorithms (registered by name): ring, tree, halving-doubling, hierarchical, direct, nvls."""
