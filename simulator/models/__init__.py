"""Model catalog and per-layer op shapes."""
