"""Calibration scripts: fit per-hardware-type constants on the packaged validation data.

``python -m simulator.calibrate`` refits everything and rewrites ``simulator/hardware/calibration/*.yaml``.
"""
