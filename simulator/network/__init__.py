"""Network: collective algorithms → flows on routed paths → timing (flow-level or analytical)."""
