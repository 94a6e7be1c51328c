"""Cluster topologies: YAML descriptions → networkx graphs (``Cluster``), plus routing."""
