"""Fit exit translators and gates for a model by self-distillation on plain text (early exit on any model)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="alias, local HF directory, or cached hub id")
    parser.add_argument("--texts", required=True, type=Path, help=f"a text file or a directory of {TEXT_SUFFIXES}")
    parser.add_argument("--exit-layers", default="auto", help="auto (up to 12 over the upper 3/4) or 1-based list")
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens to use, the last --heldout share held out")
    parser.add_argument("--heldout", type=float, default=0.2, help="share of the tokens held out for the figures")
    parser.add_argument("--precision", type=float, default=0.95, help="precision the gates aim for")
    parser.add_argument("--out", type=Path, default=None, help="sidecar directory (default: ./exits-<model>)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")


def read_texts(path: Path) -> str:
    from helios_contracts.errors import UserError

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
    if not files:
        raise UserError(f"--texts {path}: no {'/'.join(TEXT_SUFFIXES)} files there")
    try:
        return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    except OSError as error:
        raise UserError(f"cannot read --texts: {error}") from None


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from helios_contracts.errors import UserError
    from helios_worker.calibration import auto_layers, calibrate
    from helios_worker.device import resolve_device
    from helios_worker.exit_plan import parse_exit_layers
    from helios_worker.loading import ModelLoadError, load_model
    from helios_worker.model_refs import ModelRefError

    if not 0.0 < args.heldout < 1.0 or not 0.0 < args.precision <= 1.0 or args.tokens < 100:
        raise UserError("--heldout must be in (0, 1), --precision in (0, 1] and --tokens >= 100")
    try:
        layers_arg = parse_exit_layers(args.exit_layers)
        loaded = load_model(args.model, device=resolve_device(args.device))
    except (ModelRefError, ModelLoadError, ValueError) as error:
        raise UserError(str(error)) from None
    layers = auto_layers(loaded.num_layers_total) if layers_arg in ("auto", "all") else layers_arg
    if layers_arg == "none" or not [layer for layer in layers if layer < loaded.num_layers_total]:
        raise UserError(f"--exit-layers: give layers below the last one ({loaded.num_layers_total})")
    ids = loaded.tokenizer(read_texts(args.texts)).input_ids[: args.tokens]
    if len(ids) < 100:
        raise UserError(f"--texts holds only {len(ids)} tokens; give at least 100")
    cut = int(len(ids) * (1 - args.heldout))
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("calibrating", total=len(ids))
        exits = calibrate(
            loaded,
            ids[:cut],
            ids[cut:],
            layers,
            precision_target=args.precision,
            progress=lambda n: progress.advance(task, n),
        )
    out = args.out or Path(f"exits-{Path(loaded.ref.ref).name}")
    exits.save(out)
    manifest = exits.manifest
    if args.json:
        print(json.dumps(manifest.model_dump(mode="json"), indent=2))
        return 0
    print(f"wrote {out} ({manifest.num_train_tokens} training tokens, {manifest.num_heldout_tokens} held out)")
    print("layer  agreement raw -> translated  gate exits  precision")
    for report in manifest.per_layer:
        print(
            f"{report.layer:>5}  {report.agreement_raw:>13.3f} -> {report.agreement_translated:<10.3f}"
            f"  {report.pass_rate:>10.3f}  {report.precision:>9.3f}"
        )
    return 0
