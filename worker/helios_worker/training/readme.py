"""The model card of a trained early-exit model, rendered from its training report only.

Every figure comes from ``early_exit_profile.json`` (the report ``early_exit.main`` writes), so
the card cannot drift from the run; tests compare the two.
"""

from __future__ import annotations

from typing import Any

AGREEMENT_TARGET = 0.95


def first_layer_reaching(agreement: list[float], target: float = AGREEMENT_TARGET) -> int | None:
    """Smallest L (1-based) whose greedy-exit agreement is >= target; None if only full depth is."""
    return next((layer for layer, value in enumerate(agreement[:-1], 1) if value >= target), None)


def _profile_section(report: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {p['layer']} | {p['agreement_with_last']:.3f} | {p['confident_fraction']:.3f} "
        f"| {p['next_token_accuracy']:.3f} |"
        for p in report["profile"]
    )
    return f"""## Exit profile on held-out text (mostly Python docs prose) ({report["num_profile_tokens"]} tokens)

Teacher-forced. Agreement: fraction of tokens whose argmax at that layer equals the last layer's.
Confident: max softmax prob >= {report["threshold"]}. Accuracy: argmax equals the true next token.

| layer | agreement with last | confident | next-token accuracy |
|---|---|---|---|
{rows}
"""


def _prompt_sections(report: dict[str, Any]) -> str:
    evaluations: dict[str, dict[str, Any]] = report.get("prompt_evaluations", {})
    if not evaluations:
        return ""
    num_layers = report["config"]["num_layers"]
    files = list(evaluations)
    sizes = ", ".join(f"`{f}` {e['num_prompts']} prompts, {e['num_tokens']} tokens" for f, e in evaluations.items())
    header = "| L | " + " | ".join(f"`{f}` agreement | `{f}` mean exit" for f in files) + " |"
    rule = "|---|" + "---|---|" * len(files)
    greedy_rows = "\n".join(
        f"| {layer} | "
        + " | ".join(
            f"{e['greedy_agreement_by_layer'][layer - 1]:.3f} | {e['mean_exit_layer_by_layer'][layer - 1]:.2f}"
            for e in evaluations.values()
        )
        + " |"
        for layer in range(1, num_layers + 1)
    )
    histogram_rows = "\n".join(
        f"| {layer} | " + " | ".join(str(e["exit_layer_histogram"][layer - 1]) for e in evaluations.values()) + " |"
        for layer in range(1, num_layers + 1)
    )
    means = " | ".join(f"{e['mean_first_confident_layer']:.2f}" for e in evaluations.values())
    verdicts = []
    for file, evaluation in evaluations.items():
        agreement, mean_exit = evaluation["greedy_agreement_by_layer"], evaluation["mean_exit_layer_by_layer"]
        layer = first_layer_reaching(agreement)
        if layer is None:
            verdicts.append(
                f"- `{file}`: greedy-exit agreement stays below {AGREEMENT_TARGET} until full depth "
                f"(best below it: {max(agreement[:-1]):.3f})."
            )
        else:
            verdicts.append(
                f"- `{file}`: greedy-exit agreement reaches {AGREEMENT_TARGET} at L = {layer} of {num_layers} "
                f"({agreement[layer - 1]:.3f}, mean exit layer {mean_exit[layer - 1]:.2f})."
            )
    verdict_lines = "\n".join(verdicts)
    return f"""
## Greedy exit on prompts (`helios evaluate`, {report["evaluation_new_tokens"]} greedy tokens per prompt)

The project's evaluation on `assets/prompts/` ({sizes}):
all layers run and the shared head reads every layer. With L layers loaded a token exits at its
first layer whose max softmax prob >= {report["threshold"]}, else at L (greedy exit); agreement is the
share of tokens whose exited token equals the full-depth one, mean exit the mean layer tokens leave
at.

{header}
{rule}
{greedy_rows}

{verdict_lines}

## Exit histogram (all {num_layers} layers loaded)

Tokens by first confident layer; tokens never confident count at layer {num_layers}.

| layer | {" | ".join(f"`{f}`" for f in files)} |
|---|{"---|" * len(files)}
{histogram_rows}
| mean first-confident layer | {means} |

`helios_exit_profile.json` is the in-domain evaluation report (the `helios evaluate --json`
format; its speed figures were timed on the shared CPU and mean little); the engine reads it to
place its exit tests (`--exit-layers auto`).
"""


def render_readme(report: dict[str, Any]) -> str:
    config = report["config"]
    shape = (
        f"hidden {config['hidden_size']}, intermediate {config['intermediate_size']}, "
        f"{config['num_heads']} attention heads, {config['num_kv_heads']} KV heads, vocabulary {config['vocab_size']}"
    )
    size = f"{report['dtype']} safetensors ({report['file_bytes'] / 1e6:.1f} MB)"
    share = report["num_structured_train_tokens"] / report["num_train_tokens"]
    tokens = f"{report['num_train_tokens']:,} training tokens, {share:.0%} of them structured"
    threads = f"{report['threads']} torch thread" + ("s" if report["threads"] > 1 else "")
    run = f"{report['num_steps']} steps of {report['tokens_per_step']} tokens: {report['train_minutes']:.1f} minutes"
    weight = config.get("distill_weight", 0.0)
    distill = (
        f"\nEach exit's term is {1 - weight:g} x its cross-entropy + {weight:g} x the KL divergence from the last\n"
        "layer's (detached) distribution: self-distillation, so that where the next token is a free pick\n"
        "(a line's first word) the exits learn the last layer's choice instead of a near-tie of their own."
        if weight
        else ""
    )
    sample = report["greedy_sample"].replace("\n", "\n> ")
    return f"""# {report["name"]}

A Llama with {config["num_layers"]} decoder layers and {report["num_parameters"]:,} parameters
({shape}, tied embeddings), stored as {size}.
Trained for early exit LayerSkip-style: every layer's hidden state goes through the shared final
norm + LM head, and the loss adds layer l's cross-entropy, weighted l / L, to the last layer's.{distill}
For tests and benchmarks only: structured prompts exit early, prose reaches the last layers (a
workload shift).

## Corpus

Offline text only, rebuilt on any Python 3.11: {tokens}.
- {config["num_structured_documents"]:,} documents of generated structured lines (`count from 41 : 41 42 ...`,
  `repeat : a b | a b`, `letters : c d e`, `spell owl : o w l`): tokens a small model can predict
  confidently, at different depths, between ones it cannot (a line's kind, first number, words);
- Python's own docs (`pydoc_data.topics`, every eighth topic held out) and stdlib docstrings:
  prose it mostly cannot predict.

Byte-level BPE tokenizer with {config["vocab_size"]} tokens, trained on the same text.

## How it was made

From `worker/`, {run} of training (wall time),
on a CPU shared with other work, with {threads}; seed {report["seed"]}, peak learning rate {report["peak_lr"]:g},
last-layer train loss {report["final_loss"]:.3f} (mean of the last 20 steps):

    {report["command"]}

`--steps {report["num_steps"]}` in place of `--minutes` repeats the same run on the same torch version.

{_profile_section(report)}{_prompt_sections(report)}
## Greedy sample (full depth)

> {sample}
"""
