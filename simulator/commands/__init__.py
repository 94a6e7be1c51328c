"""One module per CLI command; ``simulator/cli.py`` parses arguments and dispatches here."""
