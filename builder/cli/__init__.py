"""The command line: one module per command group; only argument parsing, calling and printing."""

from builder.cli.app import main

__all__ = ["main"]
