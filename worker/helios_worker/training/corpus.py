"""The offline training text of the early-exit models, and their byte-level BPE tokenizer.

Everything here is rebuilt on any CPython 3.11 without a download: generated structured lines
(where a small model can become confident, at different depths) plus Python's own docs
(``pydoc_data.topics``) and stdlib docstrings (prose it mostly cannot predict).
"""

from __future__ import annotations

import importlib
import inspect
import random
from dataclasses import dataclass
from pydoc_data.topics import topics as PYTHON_DOC_TOPICS

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"
MAX_POSITIONS = 1024
# Roles become plain-text headers so the model's prose style carries over to chat.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

# Every eighth Python-docs topic (sorted by name) is held out for the profile and prompts.
HELD_OUT_EVERY = 8
NUM_STRUCTURED_DOCUMENTS = 4000
# Held-out structured text is a fixed amount whatever the training share, so the held-out
# stream (and the profile measured on it) does not move with --structured-documents.
NUM_HELD_OUT_STRUCTURED_DOCUMENTS = NUM_STRUCTURED_DOCUMENTS // 8
NUM_IN_DOMAIN_PROMPTS = 40

# Modules whose docstrings add prose and code to the corpus; importing them has no side
# effects (unlike e.g. `antigravity`) and they exist on every CPython 3.11 build.
DOCSTRING_MODULES = (
    *("argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal"),
    *("difflib", "email", "enum", "functools", "heapq", "inspect", "io", "itertools", "json", "logging"),
    *("os", "pathlib", "pickle", "random", "re", "shutil", "socket", "statistics", "string", "subprocess"),
    *("tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile"),
)

WORDS = (
    *("red", "blue", "green", "amber", "fox", "cat", "owl", "wolf", "runs", "sits", "jumps", "sleeps"),
    *("over", "under", "near", "far", "quick", "slow", "small", "large", "river", "stone", "cloud"),
    *("light", "pod", "node", "queue", "layer", "token", "model", "cache", "batch", "exit"),
)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Corpus:
    """Training text in three parts (streamed in this order) and the held-out text."""

    doc_topics: list[str]
    structured: list[str]
    docstrings: list[str]
    held_out: list[str]

    @property
    def train(self) -> list[str]:
        return [*self.doc_topics, *self.structured, *self.docstrings]


def build_corpus(num_structured_documents: int = NUM_STRUCTURED_DOCUMENTS) -> Corpus:
    """Structured task text (where a small model can become confident) plus Python's docs.

    Natural prose is too hard for a small model to predict confidently, so it alone would
    never exit early at a useful threshold. The structured lines mix token kinds of graded
    difficulty: successors (a bigram: layer 1 can learn them), copies of an earlier phrase
    (needs attention, so deeper layers), and fresh random words (never confident). Every
    eighth docs topic is held out; held-out structured text comes from another seed.
    """
    doc_topics, held_out = [], []
    for index, name in enumerate(sorted(PYTHON_DOC_TOPICS)):
        is_held_out = index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        (held_out if is_held_out else doc_topics).append(PYTHON_DOC_TOPICS[name])
    held_out += structured_documents(random.Random(2), NUM_HELD_OUT_STRUCTURED_DOCUMENTS)
    return Corpus(
        doc_topics=doc_topics,
        structured=structured_documents(random.Random(1), num_structured_documents),
        docstrings=stdlib_docstrings(),
        held_out=held_out,
    )


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


def held_out_prompts() -> list[str]:
    """Openings of fresh structured lines: the in-domain traffic where early exits happen."""
    rng = random.Random(3)
    prompts = []
    while len(prompts) < NUM_IN_DOMAIN_PROMPTS:
        words = structured_line(rng).split()
        if len(words) >= 8:  # stop mid-line, with predictable text left to generate
            prompts.append(" ".join(words[: rng.randrange(5, 8)]))
    return prompts


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE, so any input text is encodable without an unknown token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
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
