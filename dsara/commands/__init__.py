"""Subcommands of the `dsara` command line, one module per area."""
