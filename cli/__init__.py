"""cli: the `kaizen` command; each area registers its subcommands (cli/main.py)."""
