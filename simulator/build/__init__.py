"""The program build: a scenario's setup and feasibility, the program and layer builders, memory per GPU.

It asks strategies, schedules and the framework profile, never the raw config, and is the one place where a
scenario becomes programs (docs/design.md, "Package layout").
"""
