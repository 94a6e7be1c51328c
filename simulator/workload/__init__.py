"""Op types and per-rank programs: what each GPU does in one training step."""
