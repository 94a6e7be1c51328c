"""network/models."""
