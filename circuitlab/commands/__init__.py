"""Subcommands of the circuitlab CLI, one module per pipeline stage (see cli.COMMAND_MODULES)."""
