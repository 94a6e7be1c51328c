"""Framework profiles: what each training framework launches, fuses and overlaps (DESIGN.md, ``frameworks/``)."""
