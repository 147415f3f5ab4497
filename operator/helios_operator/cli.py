"""The `helios` command: one entry point, one module per subcommand.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and must be
cheap to import (no torch at module level), so `helios --help` and the operator image,
which has no torch, stay fast and working.
"""

from __future__ import annotations

import argparse
import sys

from helios_contracts.cli import build_parser as _build_parser
from helios_contracts.cli import run_command
from helios_contracts.errors import UserError
from helios_worker.cli import COMMANDS as WORKER_COMMANDS

__all__ = ["COMMANDS", "UserError", "build_parser", "main"]

# name -> module path; the module's docstring's first line is the help text.
COMMANDS: dict[str, str] = {
    "generate": WORKER_COMMANDS["generate"],
    "serve": WORKER_COMMANDS["serve"],
    "decide": "helios_operator.commands.decide",
    "evaluate": WORKER_COMMANDS["evaluate"],
    "calibrate": WORKER_COMMANDS["calibrate"],
    "crds": "helios_operator.commands.crds",
    "run": "helios_operator.commands.run",
    "status": "helios_operator.commands.status",
    "load": "helios_operator.commands.load",
    "operator": "helios_operator.commands.operator",
    "docs": "helios_operator.commands.docs",
}


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("helios", __doc__.splitlines()[0], COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return run_command("helios", __doc__.splitlines()[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
