"""Operator-side `helios` subcommands; each module is light (no torch) and has add_arguments/run."""
