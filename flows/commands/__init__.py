"""Subcommands of `taid` (flows/cli.py), one module per command group."""
