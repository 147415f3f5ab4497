"""Generate text with early exit over the first L layers of a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="alias, local HF directory, or cached hub id")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers to load (default: all)")
    exits = parser.add_mutually_exclusive_group()
    exits.add_argument("--exit-threshold", type=float, default=0.8, help="exit when max softmax >= T")
    exits.add_argument("--no-early-exit", action="store_true", help="run every loaded layer for every token")
    parser.add_argument("--min-exit-layer", type=int, default=1, help="first layer where a token may exit")
    parser.add_argument(
        "--exit-layers", default="auto", help="auto (from the exit profile; none without one) | none | all | 4,6"
    )
    parser.add_argument("--exit-profile", default=None, help="evaluation report JSON (helios evaluate --json)")
    parser.add_argument("--exit-gate", choices=("none", "saturation"), default="none", help="test before the head")
    parser.add_argument("--exits", default=None, help="calibrated exits (helios calibrate): their gate decides")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--batch-file", type=Path, help="file with one prompt per line (batched together)")
    parser.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", action="store_true", help="one JSON object per prompt")


def _prompts(args: argparse.Namespace) -> list[str]:
    from helios_contracts.errors import UserError

    prompts = list(args.prompt)
    if args.batch_file:
        try:
            prompts += [line for line in args.batch_file.read_text().splitlines() if line.strip()]
        except OSError as error:
            raise UserError(f"cannot read --batch-file: {error}") from None
    if not prompts:
        raise UserError("give at least one --prompt or a --batch-file")
    return prompts


def run(args: argparse.Namespace) -> int:
    from helios_contracts.errors import UserError
    from helios_worker.engine import Engine, EngineConfig, RequestError
    from helios_worker.exit_plan import describe_exits, find_profile, parse_exit_layers
    from helios_worker.loading import ModelLoadError, load_model
    from helios_worker.model_refs import ModelRefError
    from helios_worker.sampling import SamplingParams
    from helios_worker.server.state import load_exits

    prompts = _prompts(args)
    try:
        params = SamplingParams(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
        )
        mode = parse_exit_layers(args.exit_layers)
        loaded = load_model(args.model, args.layers, device=args.device)
        profile, source = find_profile(loaded.ref.path, loaded.num_layers_total, args.exit_profile)
        config = EngineConfig(
            max_batch_size=max(1, len(prompts)),
            exit_threshold=args.exit_threshold,
            early_exit=not args.no_early_exit,
            min_exit_layer=args.min_exit_layer,
            exit_layers=mode,
            exit_profile=profile,
            exit_gate=args.exit_gate,
        )
        exits = load_exits(loaded, args.exits) if args.exits else None
        if exits is not None and profile is None:
            source = f"{args.exits} (calibrated exits)"
        if config.early_exit:
            print(describe_exits(mode, profile or (exits and exits.manifest), source), file=sys.stderr)
        engine = Engine(loaded, config, exits=exits)
        token_ids = [loaded.tokenizer(p).input_ids for p in prompts]
        outputs = engine.generate(token_ids, params)
    except (ModelRefError, ModelLoadError, RequestError, ValueError) as error:
        raise UserError(str(error)) from None

    for prompt, output in zip(prompts, outputs, strict=True):
        text = loaded.tokenizer.decode(output.token_ids, skip_special_tokens=True)
        if args.json:
            record = {
                "prompt": prompt,
                "text": text,
                "token_ids": output.token_ids,
                "exit_layers": output.exit_layers,
                "confidences": [round(c, 6) for c in output.confidences],
                "breaches": output.num_breaches,
                "finish_reason": output.finish_reason,
                "num_layers_loaded": loaded.num_layers_loaded,
                "num_layers_total": loaded.num_layers_total,
            }
            print(json.dumps(record))
        else:
            layers = output.exit_layers
            mean_exit = sum(layers) / len(layers) if layers else 0.0
            print(f"{prompt}{text}")
            print(
                f"  [{len(layers)} tokens, mean exit layer {mean_exit:.1f} of {loaded.num_layers_loaded} loaded "
                f"({loaded.num_layers_total} total), {output.num_breaches} breaches]",
                file=sys.stderr,
            )
    return 0
