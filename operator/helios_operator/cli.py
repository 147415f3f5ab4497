"""The `helios` command: one entry point, one module per subcommand.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and must be
cheap to import (no torch at module level), so `helios --help` and the operator image,
which has no torch, stay fast and working.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module path; the module's docstring's first line is the help text.
COMMANDS: dict[str, str] = {
    "generate": "helios_worker.commands.generate",
    "serve": "helios_worker.commands.serve",
    "decide": "helios_operator.commands.decide",
    "evaluate": "helios_worker.commands.evaluate",
    "calibrate": "helios_worker.commands.calibrate",
    "crds": "helios_operator.commands.crds",
    "run": "helios_operator.commands.run",
    "status": "helios_operator.commands.status",
    "load": "helios_operator.commands.load",
    "operator": "helios_operator.commands.operator",
    "docs": "helios_operator.commands.docs",
}


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_path in COMMANDS.items():
        module = importlib.import_module(module_path)
        summary = (module.__doc__ or name).strip().splitlines()[0]
        sub = subparsers.add_parser(name, help=summary, description=summary)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except UserError as error:
        print(f"helios {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
