"""Framework profiles: what each training framework launches, fuses and overlaps (docs/design.md, ``frameworks/``)."""
