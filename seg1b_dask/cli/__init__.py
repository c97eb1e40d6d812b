"""The command line: ``seg1b`` and its commands. Each command parses its options and calls
one function of the layers below; every refusal is one coded line."""

from seg1b_dask.cli import admin, certify, plan, run  # noqa: F401  (each registers its commands)
from seg1b_dask.cli.app import main

__all__ = ["main"]
