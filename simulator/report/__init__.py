"""Metrics and reports: terminal table, JSON, CSV, charts, traces."""
