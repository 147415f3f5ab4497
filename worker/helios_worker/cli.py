"""`helios-worker`: the model server's commands (the worker image's entry point).

The same commands are part of `helios`; this entry point needs no operator code, so the
worker image ships without it.
"""

from __future__ import annotations

import argparse
import sys

from helios_contracts.cli import build_parser as _build_parser
from helios_contracts.cli import run_command

PROG = "helios-worker"
# name -> module path; the module's docstring's first line is the help text.
COMMANDS: dict[str, str] = {
    "generate": "helios_worker.commands.generate",
    "serve": "helios_worker.commands.serve",
    "evaluate": "helios_worker.commands.evaluate",
    "calibrate": "helios_worker.commands.calibrate",
}


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(PROG, __doc__.splitlines()[0], COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, __doc__.splitlines()[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
