"""One dispatcher for the ``helios`` and ``helios-worker`` commands: one module per subcommand.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and must be
cheap to import (no torch at module level), so ``--help`` stays fast and an image without
torch (the operator's) or without the operator (the worker's) still runs its own commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping

from helios_contracts.errors import UserError


def build_parser(prog: str, description: str, commands: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_path in commands.items():
        module = importlib.import_module(module_path)
        summary = (module.__doc__ or name).strip().splitlines()[0]
        sub = subparsers.add_parser(name, help=summary, description=summary)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def run_command(prog: str, description: str, commands: Mapping[str, str], argv: list[str] | None) -> int:
    args = build_parser(prog, description, commands).parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except UserError as error:
        print(f"{prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
