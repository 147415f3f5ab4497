"""Print the HELIOS CustomResourceDefinitions (generated from the pydantic models)."""

from __future__ import annotations

import argparse
from pathlib import Path

from helios_operator.crds import crd_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir",
        metavar="DIR",
        help="Write one file per CRD into DIR (as in the repository's crds/) instead of printing them.",
    )


def run(args: argparse.Namespace) -> int:
    files = crd_files()
    if args.output_dir is None:
        print("---\n".join(files.values()), end="")
        return 0
    directory = Path(args.output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
        print(directory / name)
    return 0
