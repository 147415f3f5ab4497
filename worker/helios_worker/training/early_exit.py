"""Train a small Llama whose intermediate layers can exit early, from text shipped with Python.

Stock small LLMs are not trained for early exit, so their intermediate layers rarely agree
with the last one. This script trains one that does, offline and deterministically, LayerSkip
style: every layer's hidden state goes through the *shared* final norm and LM head, and the
loss is the cross-entropy summed over all layers with weights rising with depth.

    python -m helios_worker.training.early_exit --out DIR [--minutes M] [--seed S] [--steps N]
        [--layers N --hidden-size H --intermediate-size I --heads A --kv-heads K --vocab-size V]
        [--structured-documents D] [--lr LR] [--distill-weight W] [--dtype auto|float32|bfloat16]
        [--threads T]
        [--prompts-dir DIR]

The defaults train helios-ee-tiny. `--minutes` picks a step count by timing a few steps;
`--steps` fixes it, and the profile records the count used so a run can be repeated exactly on
the same torch version. With `--prompts-dir` the saved model is also evaluated as `helios
evaluate` does on every `*.txt` there; the in-domain report becomes `helios_exit_profile.json`,
which the engine reads to place its exit tests.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from helios_worker.training.corpus import (
    MAX_POSITIONS,
    NUM_STRUCTURED_DOCUMENTS,
    build_corpus,
    held_out_prompts,
    prepare_token_stream,
    train_tokenizer,
)
from helios_worker.training.readme import render_readme

SEQ_LEN, BATCH_SIZE = 128, 8
PEAK_LR, MIN_LR_RATIO, WARMUP_STEPS, WEIGHT_DECAY = 3e-3, 0.1, 20, 0.01
# Intermediate-layer losses see a random quarter of positions: the LM head over the whole
# vocabulary costs about as much as a decoder layer, and a quarter is enough signal.
EXIT_LOSS_POSITION_FRACTION = 0.25
# One thread: on a shared 2-core machine, two OpenMP threads spin-wait on each other whenever
# another process takes a core, which made steps up to ten times slower.
NUM_THREADS = 1
# dtype "auto" keeps float32 up to this many bytes of weights, else bfloat16.
MAX_FLOAT32_WEIGHT_BYTES = 16_000_000
MAX_FILE_MB = 64.0
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

EXIT_THRESHOLD = 0.8
NUM_PROFILE_WINDOWS = 64
NUM_PROMPT_NEW_TOKENS = 16
# `helios evaluate`'s default, so the shipped exit profile is the one that command writes.
NUM_EVALUATION_NEW_TOKENS = 32
SAMPLE_PROMPT = "count from 41 : 41 42"
EXIT_PROFILE_FILE = "helios_exit_profile.json"
IN_DOMAIN_PROMPTS = "in_domain.txt"


@dataclass(frozen=True)
class TrainConfig:
    """What one run trains; the defaults are helios-ee-tiny's."""

    num_layers: int = 8
    hidden_size: int = 128
    intermediate_size: int = 384
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: one per attention head (no grouped-query attention)
    vocab_size: int = 2048
    num_structured_documents: int = NUM_STRUCTURED_DOCUMENTS
    peak_lr: float = PEAK_LR
    distill_weight: float = 0.0  # share of each exit's loss that is KL to the last layer (early_exit_loss)
    seed: int = 0
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16": how the weights are saved
    max_file_mb: float = MAX_FILE_MB  # the saved safetensors file must not be larger

    def __post_init__(self) -> None:
        sizes = (self.num_layers, self.hidden_size, self.intermediate_size, self.num_heads, self.kv_heads)
        if min(sizes) < 1 or self.num_structured_documents < 0:
            raise ValueError("layers, sizes and head counts must be >= 1, structured documents >= 0")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden size {self.hidden_size} is not a multiple of {self.num_heads} heads")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"{self.num_heads} attention heads do not split into {self.kv_heads} KV heads")
        if self.vocab_size < 260:  # 256 byte tokens and the 3 special ones
            raise ValueError("vocab size must be >= 260 (byte-level BPE)")
        if self.dtype not in ("auto", *SAVE_DTYPES):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not self.peak_lr > 0 or not self.max_file_mb > 0:
            raise ValueError("learning rate and file size limit must be > 0")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill weight must be in [0, 1], got {self.distill_weight}")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


@dataclass(frozen=True)
class LayerProfile:
    layer: int
    agreement_with_last: float
    confident_fraction: float
    next_token_accuracy: float


def build_model(tokenizer: PreTrainedTokenizerFast, config: TrainConfig) -> LlamaForCausalLM:
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.kv_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(llama_config)


def save_dtype(num_parameters: int, config: TrainConfig) -> torch.dtype:
    if config.dtype != "auto":
        return SAVE_DTYPES[config.dtype]
    return torch.float32 if num_parameters * 4 <= MAX_FLOAT32_WEIGHT_BYTES else torch.bfloat16


def check_file_size(num_bytes: int, config: TrainConfig, what: str) -> None:
    if num_bytes > config.max_file_mb * 1e6:
        raise SystemExit(f"{what} is {num_bytes / 1e6:.1f} MB, over --max-file-mb {config.max_file_mb:g}")


def prepare_batch(stream: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the stream: inputs and next-token targets, each [batch, seq]."""
    starts = torch.randint(0, len(stream) - SEQ_LEN - 1, (BATCH_SIZE,), generator=generator)
    windows = torch.stack([stream[start : start + SEQ_LEN + 1] for start in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def early_exit_loss(
    model: LlamaForCausalLM,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    distill_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer loss plus a depth-weighted mean of the earlier layers'; also the last layer's.

    Every earlier layer l is scored through the shared final norm and LM head with weight l / L:
    an equal weight on every layer held the last layer near the unigram loss for most of a
    five-minute run, while deep layers, the ones that can actually exit, still get most weight.
    With ``distill_weight`` w an exit's loss is (1 - w) x its cross-entropy + w x KL(last layer ||
    exit), the last layer detached: where the next token is a free choice (a line's first word)
    cross-entropy alone leaves each layer its own near-tie, so a greedy exit disagrees with full
    depth; the KL term teaches the exits the last layer's preference.
    """
    outputs = model.model(input_ids=inputs, output_hidden_states=True)
    final_logits = model.lm_head(outputs.last_hidden_state)  # [batch, seq, vocab]
    final_loss = F.cross_entropy(final_logits.flatten(0, 1), targets.flatten())
    # hidden_states holds the embeddings, then each layer's output; the last entry is already
    # normed, so the final layer comes from last_hidden_state above instead.
    intermediate = torch.stack(outputs.hidden_states[1:-1])  # [layers - 1, batch, seq, hidden]
    is_sampled = torch.rand(targets.shape, generator=generator) < EXIT_LOSS_POSITION_FRACTION
    exit_logits = model.lm_head(model.model.norm(intermediate[:, is_sampled]))  # [layers - 1, n, vocab]
    exit_targets = targets[is_sampled].expand(exit_logits.shape[0], -1)  # [layers - 1, n]
    per_token = F.cross_entropy(exit_logits.transpose(1, 2), exit_targets, reduction="none")  # [layers - 1, n]
    if distill_weight:
        teacher = final_logits[is_sampled].detach().float().log_softmax(-1)  # [n, vocab]
        kl = F.kl_div(exit_logits.log_softmax(-1), teacher.expand_as(exit_logits), log_target=True, reduction="none")
        per_token = (1 - distill_weight) * per_token + distill_weight * kl.sum(-1)
    num_layers = len(outputs.hidden_states) - 1
    depth_weights = torch.arange(1, num_layers) / num_layers  # [layers - 1]
    exit_loss = (depth_weights * per_token.mean(-1)).mean()
    return (final_loss + exit_loss) / (1 + depth_weights.mean()), final_loss


def learning_rate(step: int, num_steps: int, peak_lr: float) -> float:
    """Linear warmup, then cosine decay to MIN_LR_RATIO of the peak."""
    if step < WARMUP_STEPS:
        return peak_lr * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, num_steps - WARMUP_STEPS)
    return peak_lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: LlamaForCausalLM, peak_lr: float) -> torch.optim.AdamW:
    # Norm weights stay undecayed: shrinking them only rescales every exit's logits.
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    undecayed = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": WEIGHT_DECAY}, {"params": undecayed, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=peak_lr, betas=(0.9, 0.95))


def train_step(
    model: LlamaForCausalLM,
    optimizer: torch.optim.AdamW,
    stream: torch.Tensor,
    generator: torch.Generator,
    lr: float,
    distill_weight: float = 0.0,
) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    inputs, targets = prepare_batch(stream, generator)
    loss, final_loss = early_exit_loss(model, inputs, targets, generator, distill_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return final_loss.item()


def estimate_num_steps(
    tokenizer: PreTrainedTokenizerFast, stream: torch.Tensor, minutes: float, config: TrainConfig
) -> int:
    """Time a few steps on a throwaway model so the real run's schedule is fixed up front."""
    model = build_model(tokenizer, config)
    optimizer = make_optimizer(model, config.peak_lr)
    generator = torch.Generator().manual_seed(0)
    train_step(model, optimizer, stream, generator, config.peak_lr, config.distill_weight)  # pays one-off setup
    started = time.perf_counter()
    num_timed = 3
    for _ in range(num_timed):
        train_step(model, optimizer, stream, generator, config.peak_lr, config.distill_weight)
    seconds_per_step = (time.perf_counter() - started) / num_timed
    return max(WARMUP_STEPS + 1, int(minutes * 60 / seconds_per_step))


def train(
    tokenizer: PreTrainedTokenizerFast, stream: torch.Tensor, num_steps: int, config: TrainConfig
) -> tuple[LlamaForCausalLM, float]:
    torch.manual_seed(config.seed)
    model = build_model(tokenizer, config)
    model.train()
    optimizer = make_optimizer(model, config.peak_lr)
    generator = torch.Generator().manual_seed(config.seed)
    recent_losses: list[float] = []
    for step in range(num_steps):
        lr = learning_rate(step, num_steps, config.peak_lr)
        recent_losses.append(train_step(model, optimizer, stream, generator, lr, config.distill_weight))
        recent_losses = recent_losses[-20:]
        if step % 25 == 0 or step == num_steps - 1:
            print(f"step {step + 1}/{num_steps} last-layer loss {recent_losses[-1]:.3f}", flush=True)
    # Mean over the last steps: one batch's loss is noisy.
    return model.eval(), sum(recent_losses) / len(recent_losses)


def save_model(model: LlamaForCausalLM, out: Path, dtype: torch.dtype) -> int:
    """Save the weights as ``dtype`` safetensors; returns the file's size in bytes."""
    model = model.to(dtype)
    model.config.dtype = dtype
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return (out / "model.safetensors").stat().st_size


@torch.no_grad()
def per_layer_logits(model: LlamaForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """Shared final norm + LM head after every layer for one sequence: [layers, seq, vocab]."""
    outputs = model.model(input_ids=input_ids[None], output_hidden_states=True)
    exits = [model.model.norm(hidden) for hidden in outputs.hidden_states[1:-1]]
    return model.lm_head(torch.stack([*exits, outputs.last_hidden_state]))[:, 0]


def measure_profile(model: LlamaForCausalLM, stream: torch.Tensor) -> list[LayerProfile]:
    """Per layer: agreement with the last layer's argmax, confident fraction, accuracy."""
    num_windows = min(NUM_PROFILE_WINDOWS, (len(stream) - 1) // SEQ_LEN)
    agree, confident, correct = 0, 0, 0
    for window in range(num_windows):
        chunk = stream[window * SEQ_LEN : (window + 1) * SEQ_LEN + 1]
        logits = per_layer_logits(model, chunk[:-1])  # [layers, seq, vocab]
        probs, predictions = logits.float().softmax(-1).max(-1)  # [layers, seq] each
        agree = agree + (predictions == predictions[-1]).sum(-1)
        confident = confident + (probs >= EXIT_THRESHOLD).sum(-1)
        correct = correct + (predictions == chunk[1:]).sum(-1)
    num_tokens = num_windows * SEQ_LEN
    return [
        LayerProfile(
            layer=layer + 1,
            agreement_with_last=round(agree[layer].item() / num_tokens, 4),
            confident_fraction=round(confident[layer].item() / num_tokens, 4),
            next_token_accuracy=round(correct[layer].item() / num_tokens, 4),
        )
        for layer in range(len(agree))
    ]


@torch.no_grad()
def first_confident_layers(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompt: str,
    threshold: float = EXIT_THRESHOLD,
    num_new_tokens: int = NUM_PROMPT_NEW_TOKENS,
) -> list[int]:
    """Greedy-generate, then for each new token the first layer (1-based) that is confident."""
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
    generated = model.generate(
        prompt_ids,
        max_new_tokens=num_new_tokens,
        min_new_tokens=num_new_tokens,
        do_sample=False,
        top_p=None,
        top_k=None,
    )[0]
    # Position i's logits chose token i + 1, so these are the positions that chose new tokens.
    logits = per_layer_logits(model, generated)[:, prompt_ids.shape[1] - 1 : -1]  # [layers, new, vocab]
    is_confident = logits.float().softmax(-1).amax(-1) >= threshold  # [layers, new]
    num_layers = is_confident.shape[0]
    # A token no layer is confident about runs the whole stack.
    first = torch.where(is_confident.any(0), is_confident.int().argmax(0) + 1, num_layers)
    return first.tolist()


def read_prompts(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def greedy_sample(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
    generated = model.generate(prompt_ids, max_new_tokens=48, do_sample=False, top_p=None, top_k=None)
    return tokenizer.decode(generated[0], skip_special_tokens=True)


def evaluation_ref(name: str, out: Path) -> str:
    """The built-in alias when it names ``out`` (so the report reads like `helios evaluate NAME`'s)."""
    from helios_worker.model_refs import ALIASES, resolve

    if name in ALIASES and resolve(name).path.resolve() == out.resolve():
        return name
    return str(out)


def evaluate_prompts(name: str, out: Path, prompts_dir: Path) -> tuple[dict[str, dict], dict]:
    """Evaluate the saved model on each ``*.txt`` in ``prompts_dir`` as `helios evaluate` does.

    Returns the curves per file (for the README) and the in-domain EvaluationReport as JSON.
    The reports' speed figures are not used: they come from whatever else the CPU was doing.
    """
    from helios_worker.evaluation import evaluate_candidates

    curves, in_domain = {}, {}
    for path in sorted(prompts_dir.glob("*.txt")):
        [report] = evaluate_candidates(
            [(name, evaluation_ref(name, out))],
            read_prompts(path),
            max_new_tokens=NUM_EVALUATION_NEW_TOKENS,
            exit_threshold=EXIT_THRESHOLD,
        )
        curves[path.name] = {
            "num_prompts": report.num_prompts,
            "num_tokens": report.num_tokens,
            "exit_layer_histogram": report.exit_layer_histogram,
            # With all N layers loaded a token exits at its first confident layer, or at N.
            "mean_first_confident_layer": round(report.mean_exit_layer_by_layer[-1], 4),
            "agreement_by_layer": [round(a, 4) for a in report.agreement_by_layer],
            "greedy_agreement_by_layer": [round(a, 4) for a in report.greedy_agreement_by_layer],
            "mean_exit_layer_by_layer": [round(m, 4) for m in report.mean_exit_layer_by_layer],
        }
        if path.name == IN_DOMAIN_PROMPTS:
            in_domain = report.model_dump(mode="json")
    return curves, in_domain


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, TrainConfig]:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the model into")
    parser.add_argument("--name", help="model name in the README and the exit profile (default: --out's name)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    parser.add_argument("--steps", type=int, help="exact step count (overrides --minutes)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=NUM_THREADS, help="torch threads (1 on a shared CPU)")
    parser.add_argument("--prompts-dir", type=Path, help="write in_domain.txt here; evaluate on *.txt")
    shape = parser.add_argument_group("architecture (a Llama with tied embeddings)")
    shape.add_argument("--layers", type=int, default=defaults.num_layers)
    shape.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    shape.add_argument("--intermediate-size", type=int, default=defaults.intermediate_size)
    shape.add_argument("--heads", type=int, default=defaults.num_heads)
    shape.add_argument("--kv-heads", type=int, help="KV heads (grouped-query attention; default: --heads)")
    shape.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="BPE vocabulary")
    recipe = parser.add_argument_group("data, optimiser and output")
    recipe.add_argument(
        "--structured-documents",
        type=int,
        default=defaults.num_structured_documents,
        help="generated structured documents in the training text (the in-domain share)",
    )
    recipe.add_argument("--lr", type=float, default=defaults.peak_lr, help="peak learning rate")
    recipe.add_argument(
        "--distill-weight",
        type=float,
        default=defaults.distill_weight,
        help="share of each exit's loss that is KL to the (detached) last layer; 0: cross-entropy only",
    )
    recipe.add_argument(
        "--dtype",
        choices=("auto", *SAVE_DTYPES),
        default=defaults.dtype,
        help=f"saved weights (auto: float32 up to {MAX_FLOAT32_WEIGHT_BYTES // 10**6} MB, else bfloat16)",
    )
    recipe.add_argument("--max-file-mb", type=float, default=defaults.max_file_mb, help="refuse a larger file")
    args = parser.parse_args(argv)
    if args.threads < 1 or (args.steps is not None and args.steps < 1) or not args.minutes > 0:
        parser.error("--threads and --steps must be >= 1, --minutes > 0")
    try:
        config = TrainConfig(
            num_layers=args.layers,
            hidden_size=args.hidden_size,
            intermediate_size=args.intermediate_size,
            num_heads=args.heads,
            num_kv_heads=args.kv_heads,
            vocab_size=args.vocab_size,
            num_structured_documents=args.structured_documents,
            peak_lr=args.lr,
            distill_weight=args.distill_weight,
            seed=args.seed,
            dtype=args.dtype,
            max_file_mb=args.max_file_mb,
        )
    except ValueError as error:
        parser.error(str(error))
    return args, config


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    name = args.name or args.out.resolve().name
    torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed)

    corpus = build_corpus(config.num_structured_documents)
    tokenizer = train_tokenizer(corpus.train, config.vocab_size)
    parts = [prepare_token_stream(tokenizer, part) for part in (corpus.doc_topics, corpus.structured)]
    stream = torch.cat([*parts, prepare_token_stream(tokenizer, corpus.docstrings)])
    with torch.device("meta"):  # shapes only: no memory, no draw from the random generator
        num_parameters = sum(p.numel() for p in build_model(tokenizer, config).parameters())
    dtype = save_dtype(num_parameters, config)
    # Refuse a model over the size limit before training it, not after.
    check_file_size(num_parameters * dtype.itemsize, config, f"{num_parameters:,} parameters as {dtype}")
    print(f"corpus: {len(stream)} training tokens, {len(corpus.held_out)} held-out documents", flush=True)
    num_steps = args.steps or estimate_num_steps(tokenizer, stream, args.minutes, config)
    started = time.perf_counter()
    model, final_loss = train(tokenizer, stream, num_steps, config)
    train_minutes = (time.perf_counter() - started) / 60

    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out)
    file_bytes = save_model(model, args.out, dtype)
    check_file_size(file_bytes, config, str(args.out / "model.safetensors"))
    # Measure what was saved, so the profile describes the committed weights.
    model = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    held_out_stream = prepare_token_stream(tokenizer, corpus.held_out)
    profile = measure_profile(model, held_out_stream)
    report = {
        "name": name,
        "command": "python -m helios_worker.training.early_exit " + " ".join(argv or sys.argv[1:]),
        "seed": config.seed,
        # The budget only matters when it chose the step count; the measured time always does.
        "minutes": None if args.steps else args.minutes,
        "train_minutes": round(train_minutes, 2),
        "threads": args.threads,
        "num_steps": num_steps,
        "tokens_per_step": BATCH_SIZE * SEQ_LEN,
        "peak_lr": config.peak_lr,
        "final_loss": round(final_loss, 4),
        "config": asdict(config) | {"num_kv_heads": config.kv_heads},
        "dtype": str(dtype).removeprefix("torch."),
        "file_bytes": file_bytes,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_train_tokens": len(stream),
        "num_structured_train_tokens": len(parts[1]),
        "num_profile_tokens": min(NUM_PROFILE_WINDOWS, (len(held_out_stream) - 1) // SEQ_LEN) * SEQ_LEN,
        "threshold": EXIT_THRESHOLD,
        "profile": [asdict(layer) for layer in profile],
        "greedy_sample": greedy_sample(model, tokenizer, SAMPLE_PROMPT),
    }
    if args.prompts_dir:
        args.prompts_dir.mkdir(parents=True, exist_ok=True)
        (args.prompts_dir / IN_DOMAIN_PROMPTS).write_text("\n".join(held_out_prompts()) + "\n")
        del model  # the evaluation loads the saved model itself, through the engine's loader
        report["evaluation_new_tokens"] = NUM_EVALUATION_NEW_TOKENS
        report["prompt_evaluations"], in_domain_report = evaluate_prompts(name, args.out, args.prompts_dir)
        report["mean_first_confident_layer"] = {
            file: curves["mean_first_confident_layer"] for file, curves in report["prompt_evaluations"].items()
        }
        (args.out / EXIT_PROFILE_FILE).write_text(json.dumps(in_domain_report, indent=1) + "\n")
    (args.out / "early_exit_profile.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "README.md").write_text(render_readme(report))
    print(render_readme(report))


if __name__ == "__main__":
    main()
