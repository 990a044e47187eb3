"""Subcommands of the `tfvctr` console script, one module each (see tfvctr/cli.py)."""
