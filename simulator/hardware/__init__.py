"""GPU datasheet specs and per-GPU-type calibration profiles."""
