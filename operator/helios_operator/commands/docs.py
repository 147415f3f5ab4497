"""Write the files generated from code: the HeliosDeployment field reference and the chart's CRDs and RBAC rules."""

from __future__ import annotations

import argparse
from pathlib import Path

from helios_contracts.errors import UserError
from helios_operator.chart import CHART_DIR, chart_files
from helios_operator.docs import REFERENCE_PATH, field_reference


def generated_files() -> dict[str, str]:
    """Repository path -> content, for every file this command writes."""
    return {REFERENCE_PATH: field_reference(), **chart_files()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=".", metavar="DIR", help="Repository root (default: the current directory).")
    parser.add_argument("--check", action="store_true", help="Write nothing; exit 1 if a file is missing or stale.")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not (root / CHART_DIR / "Chart.yaml").is_file():
        raise UserError(f"{root.resolve()} is not the HELIOS repository root (no {CHART_DIR}/Chart.yaml)")
    stale = []
    for relative, text in generated_files().items():
        path = root / relative
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(relative)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for relative in stale:
        print(f"{'stale' if args.check else 'wrote'}: {relative}")
    return 1 if args.check and stale else 0
