"""Train a tiny Llama whose intermediate layers can exit early, from text shipped with Python.

Stock small LLMs are not trained for early exit, so their intermediate layers rarely agree
with the last one. This script trains one that does, offline and deterministically, LayerSkip
style: every layer's hidden state goes through the *shared* final norm and LM head, and the
loss is the cross-entropy summed over all layers with weights rising with depth.

    python -m helios_worker.training.early_exit --out DIR [--minutes M] [--seed S] [--steps N]

`--minutes` picks a step count by timing a few steps; `--steps` fixes it, and the profile
records the count used so a run can be repeated exactly on the same torch version.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from pydoc_data.topics import topics as PYTHON_DOC_TOPICS

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"
VOCAB_SIZE = 2048
# Roles become plain-text headers so the tiny model's prose style carries over to chat.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

# Sized so about five minutes on one CPU core sees the corpus a few times over.
NUM_LAYERS, HIDDEN_SIZE, NUM_HEADS, INTERMEDIATE_SIZE = 8, 128, 4, 384
MAX_POSITIONS = 1024
SEQ_LEN, BATCH_SIZE = 128, 8
PEAK_LR, MIN_LR_RATIO, WARMUP_STEPS, WEIGHT_DECAY = 3e-3, 0.1, 20, 0.01
# Intermediate-layer losses see a random quarter of positions: the LM head over the whole
# vocabulary costs about as much as a decoder layer, and a quarter is enough signal.
EXIT_LOSS_POSITION_FRACTION = 0.25
# One thread: on a shared 2-core machine, two OpenMP threads spin-wait on each other whenever
# another process takes a core, which made steps up to ten times slower.
NUM_THREADS = 1
MAX_WEIGHT_BYTES = 16_000_000

# Every eighth Python-docs topic (sorted by name) is held out for the profile and prompts.
HELD_OUT_EVERY = 8
NUM_STRUCTURED_DOCUMENTS = 4000
EXIT_THRESHOLD = 0.8
NUM_PROFILE_WINDOWS = 64
NUM_PROMPT_NEW_TOKENS = 16
NUM_IN_DOMAIN_PROMPTS = 40
PROMPT_WORDS = 10
SAMPLE_PROMPT = "count from 41 : 41 42"

# Modules whose docstrings add prose and code to the corpus; importing them has no side
# effects (unlike e.g. `antigravity`) and they exist on every CPython 3.11 build.
DOCSTRING_MODULES = (
    *("argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal"),
    *("difflib", "email", "enum", "functools", "heapq", "inspect", "io", "itertools", "json", "logging"),
    *("os", "pathlib", "pickle", "random", "re", "shutil", "socket", "statistics", "string", "subprocess"),
    *("tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile"),
)


@dataclass(frozen=True)
class Corpus:
    train: list[str]
    held_out: list[str]


@dataclass(frozen=True)
class LayerProfile:
    layer: int
    agreement_with_last: float
    confident_fraction: float
    next_token_accuracy: float


def build_corpus() -> Corpus:
    """Structured task text (where a small model can become confident) plus Python's docs.

    Natural prose is too hard for a 2M-parameter model to predict confidently, so it alone
    would never exit early at a useful threshold. The structured lines mix token kinds of
    graded difficulty: successors (a bigram: layer 1 can learn them), copies of an earlier
    phrase (needs attention, so deeper layers), and fresh random words (never confident). Every
    eighth docs topic is held out; held-out structured text comes from another seed.
    """
    train, held_out = [], []
    for index, name in enumerate(sorted(PYTHON_DOC_TOPICS)):
        is_held_out = index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        (held_out if is_held_out else train).append(PYTHON_DOC_TOPICS[name])
    train += structured_documents(random.Random(1), NUM_STRUCTURED_DOCUMENTS)
    held_out += structured_documents(random.Random(2), NUM_STRUCTURED_DOCUMENTS // 8)
    return Corpus(train=train + stdlib_docstrings(), held_out=held_out)


WORDS = (
    *("red", "blue", "green", "amber", "fox", "cat", "owl", "wolf", "runs", "sits", "jumps", "sleeps"),
    *("over", "under", "near", "far", "quick", "slow", "small", "large", "river", "stone", "cloud"),
    *("light", "pod", "node", "queue", "layer", "token", "model", "cache", "batch", "exit"),
)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def structured_line(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # successors: every number after the first two is a pure bigram
        start = rng.randrange(0, 900)
        numbers = " ".join(str(start + i) for i in range(rng.randrange(8, 24)))
        return f"count from {start} : {numbers}"
    if kind == 1:  # copies: the phrase is random once, then predictable by attention
        phrase = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 5)))
        return "repeat : " + " | ".join([phrase] * rng.randrange(3, 6))
    if kind == 2:  # alphabet walk from a random letter
        start = rng.randrange(0, 16)
        return "letters : " + " ".join(LETTERS[start : start + rng.randrange(6, 11)])
    # spelling: a random word, then its letters
    word = rng.choice(WORDS)
    return f"spell {word} : " + " ".join(word)


def structured_documents(rng: random.Random, count: int) -> list[str]:
    return ["\n".join(structured_line(rng) for _ in range(rng.randrange(4, 12))) for _ in range(count)]


def stdlib_docstrings() -> list[str]:
    docs = []
    for module_name in DOCSTRING_MODULES:
        module = importlib.import_module(module_name)
        docs.append(inspect.getdoc(module) or "")
        for name, member in sorted(vars(module).items()):
            # Only members defined here, so re-exported names are not counted twice.
            is_own = getattr(member, "__module__", None) == module_name
            is_documented_api = inspect.isclass(member) or inspect.isfunction(member)
            if is_own and is_documented_api and not name.startswith("_"):
                docs.append(inspect.getdoc(member) or "")
    return [doc for doc in docs if len(doc) > 80]


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE, so any input text is encodable without an unknown token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    # Every sequence starts with BOS, as Llama tokenizers do.
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )


def prepare_token_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """All documents as one stream `BOS doc EOS BOS doc EOS ...`, shape [num_tokens]."""
    ids: list[int] = []
    for text in texts:
        # Documents are longer than the model's context; windows are cut later.
        ids.extend(tokenizer(text, verbose=False).input_ids)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        intermediate_size=INTERMEDIATE_SIZE,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def prepare_batch(stream: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the stream: inputs and next-token targets, each [batch, seq]."""
    starts = torch.randint(0, len(stream) - SEQ_LEN - 1, (BATCH_SIZE,), generator=generator)
    windows = torch.stack([stream[start : start + SEQ_LEN + 1] for start in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def early_exit_loss(
    model: LlamaForCausalLM, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer loss plus a depth-weighted mean of the earlier layers'; also the last layer's.

    Every earlier layer l is scored through the shared final norm and LM head with weight l / L:
    an equal weight on every layer held the last layer near the unigram loss for most of a
    five-minute run, while deep layers, the ones that can actually exit, still get most weight.
    """
    outputs = model.model(input_ids=inputs, output_hidden_states=True)
    final_loss = F.cross_entropy(model.lm_head(outputs.last_hidden_state).flatten(0, 1), targets.flatten())
    # hidden_states holds the embeddings, then each layer's output; the last entry is already
    # normed, so the final layer comes from last_hidden_state above instead.
    intermediate = torch.stack(outputs.hidden_states[1:-1])  # [layers - 1, batch, seq, hidden]
    is_sampled = torch.rand(targets.shape, generator=generator) < EXIT_LOSS_POSITION_FRACTION
    exit_logits = model.lm_head(model.model.norm(intermediate[:, is_sampled]))  # [layers - 1, n, vocab]
    exit_targets = targets[is_sampled].expand(exit_logits.shape[0], -1)  # [layers - 1, n]
    per_token = F.cross_entropy(exit_logits.transpose(1, 2), exit_targets, reduction="none")
    num_layers = len(outputs.hidden_states) - 1
    depth_weights = torch.arange(1, num_layers) / num_layers  # [layers - 1]
    exit_loss = (depth_weights * per_token.mean(-1)).mean()
    return (final_loss + exit_loss) / (1 + depth_weights.mean()), final_loss


def learning_rate(step: int, num_steps: int) -> float:
    """Linear warmup, then cosine decay to MIN_LR_RATIO of the peak."""
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, num_steps - WARMUP_STEPS)
    return PEAK_LR * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: LlamaForCausalLM) -> torch.optim.AdamW:
    # Norm weights stay undecayed: shrinking them only rescales every exit's logits.
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    undecayed = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": WEIGHT_DECAY}, {"params": undecayed, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=PEAK_LR, betas=(0.9, 0.95))


def train_step(
    model: LlamaForCausalLM,
    optimizer: torch.optim.AdamW,
    stream: torch.Tensor,
    generator: torch.Generator,
    lr: float,
) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    inputs, targets = prepare_batch(stream, generator)
    loss, final_loss = early_exit_loss(model, inputs, targets, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return final_loss.item()


def estimate_num_steps(tokenizer: PreTrainedTokenizerFast, stream: torch.Tensor, minutes: float) -> int:
    """Time a few steps on a throwaway model so the real run's schedule is fixed up front."""
    model = build_model(tokenizer)
    optimizer = make_optimizer(model)
    generator = torch.Generator().manual_seed(0)
    train_step(model, optimizer, stream, generator, PEAK_LR)  # first step pays one-off setup
    started = time.perf_counter()
    num_timed = 3
    for _ in range(num_timed):
        train_step(model, optimizer, stream, generator, PEAK_LR)
    seconds_per_step = (time.perf_counter() - started) / num_timed
    return max(WARMUP_STEPS + 1, int(minutes * 60 / seconds_per_step))


def train(
    tokenizer: PreTrainedTokenizerFast, stream: torch.Tensor, num_steps: int, seed: int
) -> tuple[LlamaForCausalLM, float]:
    torch.manual_seed(seed)
    model = build_model(tokenizer)
    model.train()
    optimizer = make_optimizer(model)
    generator = torch.Generator().manual_seed(seed)
    recent_losses: list[float] = []
    for step in range(num_steps):
        recent_losses.append(train_step(model, optimizer, stream, generator, learning_rate(step, num_steps)))
        recent_losses = recent_losses[-20:]
        if step % 25 == 0 or step == num_steps - 1:
            print(f"step {step + 1}/{num_steps} last-layer loss {recent_losses[-1]:.3f}", flush=True)
    # Mean over the last steps: one batch's loss is noisy.
    return model.eval(), sum(recent_losses) / len(recent_losses)


def save_model(model: LlamaForCausalLM, out: Path) -> str:
    """Save as float32 if it fits the size budget, else bfloat16; returns the dtype name."""
    num_bytes = sum(p.numel() for p in model.parameters()) * 4  # tied weights counted once
    dtype = torch.float32 if num_bytes <= MAX_WEIGHT_BYTES else torch.bfloat16
    model = model.to(dtype)
    model.config.dtype = dtype
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return str(dtype).removeprefix("torch.")


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
) -> list[int]:
    """Greedy-generate, then for each new token the first layer (1-based) that is confident."""
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
    num_new = NUM_PROMPT_NEW_TOKENS
    generated = model.generate(
        prompt_ids, max_new_tokens=num_new, min_new_tokens=num_new, do_sample=False, top_p=None, top_k=None
    )[0]
    # Position i's logits chose token i + 1, so these are the positions that chose new tokens.
    logits = per_layer_logits(model, generated)[:, prompt_ids.shape[1] - 1 : -1]  # [layers, new, vocab]
    is_confident = logits.float().softmax(-1).amax(-1) >= threshold  # [layers, new]
    num_layers = is_confident.shape[0]
    # A token no layer is confident about runs the whole stack.
    first = torch.where(is_confident.any(0), is_confident.int().argmax(0) + 1, num_layers)
    return first.tolist()


def mean_first_confident_layer(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: list[str]
) -> float:
    layers = [layer for prompt in prompts for layer in first_confident_layers(model, tokenizer, prompt)]
    return sum(layers) / len(layers)


def held_out_prompts(held_out: list[str]) -> list[str]:
    """Openings of held-out structured lines: the in-domain traffic where early exits happen."""
    rng = random.Random(3)
    prompts = []
    while len(prompts) < NUM_IN_DOMAIN_PROMPTS:
        words = structured_line(rng).split()
        if len(words) >= 8:  # stop mid-line, with predictable text left to generate
            prompts.append(" ".join(words[: rng.randrange(5, 8)]))
    return prompts


def read_prompts(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def greedy_sample(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
    generated = model.generate(prompt_ids, max_new_tokens=48, do_sample=False, top_p=None, top_k=None)
    return tokenizer.decode(generated[0], skip_special_tokens=True)


def render_readme(report: dict) -> str:
    rows = "\n".join(
        f"| {p['layer']} | {p['agreement_with_last']:.3f} | {p['confident_fraction']:.3f} "
        f"| {p['next_token_accuracy']:.3f} |"
        for p in report["profile"]
    )
    exit_layers = report.get("mean_first_confident_layer", {})
    prompt_lines = "".join(f"| `{name}` | {layer:.2f} |\n" for name, layer in exit_layers.items())
    prompt_section = (
        f"\n## Workload shift ({NUM_PROMPT_NEW_TOKENS} greedy tokens per prompt)\n\n"
        f"Mean first layer whose max softmax prob >= {EXIT_THRESHOLD} (tokens never confident count as "
        f"layer {NUM_LAYERS}), on `assets/prompts/`:\n\n| prompts | mean first-confident layer |\n|---|---|\n"
        f"{prompt_lines}"
        if prompt_lines
        else ""
    )
    sample = report["greedy_sample"].replace("\n", "\n> ")
    return f"""# helios-ee-tiny

A Llama with {NUM_LAYERS} layers ({report["num_parameters"]:,} parameters, hidden {HIDDEN_SIZE}, tied
embeddings, {report["dtype"]}) trained for early exit LayerSkip-style: every layer's hidden state goes
through the shared final norm + LM head, and the loss adds layer l's cross-entropy, weighted l / L, to
the last layer's. Corpus: generated structured lines (`count from 41 : 41 42 ...`, `repeat : a b | a b`,
`letters : c d e`, `spell owl : o w l`: tokens a small model can predict confidently, at different
depths) plus Python's own docs (`pydoc_data.topics`) and stdlib docstrings (prose it cannot), so it
is rebuilt offline on any Python 3.11. Byte-level BPE tokenizer with {VOCAB_SIZE} tokens. For tests and
benchmarks only: structured prompts exit early, prose reaches the last layer (a workload shift).

Made by (from `worker/`, {report["num_steps"]} steps in {report["train_minutes"]:.1f} minutes on a shared
CPU (one thread), seed {report["seed"]}, last-layer train loss {report["final_loss"]:.3f}):

    {report["command"]}

`--steps {report["num_steps"]}` in place of `--minutes` repeats the same run on the same torch version.

## Exit profile on held-out text (mostly Python docs prose) ({report["num_profile_tokens"]} tokens)

Agreement: fraction of tokens whose argmax at that layer equals the last layer's. Confident: max softmax
prob >= {EXIT_THRESHOLD}. Accuracy: argmax equals the true next token.

| layer | agreement with last | confident | next-token accuracy |
|---|---|---|---|
{rows}
{prompt_section}
## Greedy sample

> {sample}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the model into")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    parser.add_argument("--steps", type=int, help="exact step count (overrides --minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts-dir", type=Path, help="write in_domain.txt here; measure *.txt")
    args = parser.parse_args(argv)
    torch.set_num_threads(NUM_THREADS)
    torch.manual_seed(args.seed)

    corpus = build_corpus()
    tokenizer = train_tokenizer(corpus.train)
    stream = prepare_token_stream(tokenizer, corpus.train)
    print(f"corpus: {len(stream)} training tokens, {len(corpus.held_out)} held-out documents", flush=True)
    num_steps = args.steps or estimate_num_steps(tokenizer, stream, args.minutes)
    started = time.perf_counter()
    model, final_loss = train(tokenizer, stream, num_steps, args.seed)
    train_minutes = (time.perf_counter() - started) / 60

    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out)
    dtype = save_model(model, args.out)
    # Measure what was saved, so the profile describes the committed weights.
    model = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    held_out_stream = prepare_token_stream(tokenizer, corpus.held_out)
    profile = measure_profile(model, held_out_stream)
    report = {
        "command": "python -m helios_worker.training.early_exit " + " ".join(argv or sys.argv[1:]),
        "seed": args.seed,
        # The budget only matters when it chose the step count; the measured time always does.
        "minutes": None if args.steps else args.minutes,
        "train_minutes": round(train_minutes, 2),
        "num_steps": num_steps,
        "final_loss": round(final_loss, 4),
        "dtype": dtype,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_profile_tokens": min(NUM_PROFILE_WINDOWS, (len(held_out_stream) - 1) // SEQ_LEN) * SEQ_LEN,
        "threshold": EXIT_THRESHOLD,
        "profile": [asdict(layer) for layer in profile],
        "greedy_sample": greedy_sample(model, tokenizer, SAMPLE_PROMPT),
    }
    if args.prompts_dir:
        args.prompts_dir.mkdir(parents=True, exist_ok=True)
        (args.prompts_dir / "in_domain.txt").write_text("\n".join(held_out_prompts(corpus.held_out)) + "\n")
        report["mean_first_confident_layer"] = {
            path.name: round(mean_first_confident_layer(model, tokenizer, read_prompts(path)), 3)
            for path in sorted(args.prompts_dir.glob("*.txt"))
        }
    (args.out / "early_exit_profile.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "README.md").write_text(render_readme(report))
    print(render_readme(report))


if __name__ == "__main__":
    main()
