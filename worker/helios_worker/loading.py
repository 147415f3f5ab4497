"""Load only the first L decoder layers of a Hugging Face checkpoint.

The model skeleton is built on the meta device with ``num_hidden_layers = L``, so layers >= L
never exist; then exactly the tensors it needs (embeddings, layers 0..L-1, final norm, LM
head) are read from the safetensors files, sharded or not, by name. ``resize_layers`` grows
or shrinks the stack in place the same way (the paper's "load more layers" without restart).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from helios_contracts.memory_model import ModelShape
from helios_worker.architectures import SUPPORTED_MODEL_TYPES, Family, family_for
from helios_worker.exit_plan import StepCosts
from helios_worker.model_refs import ModelRefError, ResolvedRef, resolve


class ModelLoadError(ValueError):
    """A model that cannot be loaded as asked; the message says why and what is allowed."""


@dataclass(frozen=True)
class Checkpoint:
    """Index of the tensors in a directory of safetensors files: name -> (file, bytes)."""

    files: dict[str, Path]
    nbytes: dict[str, int]

    @classmethod
    def open(cls, directory: Path) -> Checkpoint:
        index_file = directory / "model.safetensors.index.json"
        if index_file.exists():
            weight_map = json.loads(index_file.read_text())["weight_map"]
            shard_names = sorted(set(weight_map.values()))
        else:
            shard_names = sorted(p.name for p in directory.glob("*.safetensors"))
        if not shard_names:
            raise ModelLoadError(f"no *.safetensors files in {directory} (other weight formats are not supported)")
        files: dict[str, Path] = {}
        nbytes: dict[str, int] = {}
        for shard in shard_names:
            header = _read_header(directory / shard)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                files[name] = directory / shard
                begin, end = info["data_offsets"]
                nbytes[name] = end - begin
        return cls(files=files, nbytes=nbytes)

    @property
    def total_bytes(self) -> int:
        return sum(self.nbytes.values())

    def read(self, names: dict[str, str], dtype: torch.dtype, device: torch.device) -> tuple[dict, int]:
        """Read checkpoint tensors ``names`` (model key -> checkpoint key); return them and bytes read."""
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for model_key, ckpt_key in names.items():
            by_file.setdefault(self.files[ckpt_key], []).append((model_key, ckpt_key))
        tensors: dict[str, torch.Tensor] = {}
        bytes_read = 0
        for path, keys in by_file.items():
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for model_key, ckpt_key in keys:
                    tensor = handle.get_tensor(ckpt_key)
                    tensors[model_key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
                    bytes_read += self.nbytes[ckpt_key]
        return tensors, bytes_read


def _read_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(size))


@dataclass
class LoadedModel:
    """A causal LM holding its first ``num_layers_loaded`` decoder layers, plus what the engine needs."""

    name: str
    ref: ResolvedRef
    model: nn.Module
    tokenizer: Any
    family: Family
    config: Any  # the checkpoint's own config (all N layers)
    checkpoint: Checkpoint
    dtype: torch.dtype
    device: torch.device
    bytes_loaded: int = 0
    num_layers_total: int = 0
    layer_bytes: list[int] = field(default_factory=list)
    hf_layer_type: type | None = None  # HF's decoder layer class: new layers are loaded into it first

    @property
    def layers(self) -> nn.ModuleList:
        return self.family.layers(self.model)

    @property
    def num_layers_loaded(self) -> int:
        return len(self.layers)

    @property
    def architecture(self) -> str:
        return self.config.model_type

    @property
    def shared_bytes(self) -> int:
        """Checkpoint bytes outside decoder layers (embeddings, final norm, head)."""
        return self.checkpoint.total_bytes - sum(self.layer_bytes)

    @functools.cached_property
    def shape(self) -> ModelShape:
        """The sizes the memory model, the KV cache and the exit plan need, from the config and the live
        parameters (the same whatever the number of layers loaded: computed once)."""
        config = self.config
        heads = config.num_attention_heads
        in_layers = {id(p) for layer in self.layers for p in layer.parameters()}
        shared = {id(p): p.numel() for p in self.model.parameters() if id(p) not in in_layers}  # tied: once
        return ModelShape(
            num_layers_total=self.num_layers_total,
            hidden_size=config.hidden_size,
            intermediate_size=getattr(config, "intermediate_size", None)
            or getattr(config, "ffn_dim", None)
            or getattr(config, "n_inner", None)
            or 4 * config.hidden_size,
            vocab_size=config.vocab_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            params_per_layer=sum(p.numel() for p in self.layers[0].parameters()),
            params_shared=sum(shared.values()),
        )

    def step_costs(self, context_tokens: int) -> StepCosts:
        """Exit-plan costs (``helios_worker.exit_plan.StepCosts``) in one layer's weight reads, by element counts.

        Everything is read in the loaded dtype, so element ratios are byte ratios.
        """
        shape = self.shape
        layer = shape.params_per_layer
        kv_width = 2 * shape.num_kv_heads * shape.head_dim  # K and V per token
        return StepCosts(
            head=self.model.get_output_embeddings().weight.numel() / layer,
            head_row=shape.vocab_size / layer,
            row=kv_width * context_tokens / layer,
            fill=kv_width * shape.hidden_size / layer,
        )

    def weight_bytes(self, num_layers: int | None = None) -> int:
        layers = self.num_layers_loaded if num_layers is None else num_layers
        return self.shared_bytes + sum(self.layer_bytes[:layers])


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 matmuls are slow on most CPUs; on GPUs bf16 halves memory at no accuracy cost here.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _checkpoint_key(model_key: str, checkpoint: Checkpoint, base_model_prefix: str) -> str | None:
    """Checkpoints name tensors with or without the base model prefix (``decoder.`` vs ``model.decoder.``)."""
    if model_key in checkpoint.files:
        return model_key
    stripped = model_key.removeprefix(base_model_prefix + ".")
    if stripped in checkpoint.files:
        return stripped
    return None


def _truncated_config(config: Any, num_layers: int) -> Any:
    truncated = copy.deepcopy(config)
    truncated.num_hidden_layers = num_layers
    if isinstance(getattr(truncated, "layer_types", None), list):
        truncated.layer_types = truncated.layer_types[:num_layers]
    return truncated


def _materialize_buffers(model: nn.Module, config: Any, device: torch.device) -> None:
    """Non-persistent buffers (rotary inv_freq) are not in checkpoints: rebuild their modules."""
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            if not hasattr(module, "inv_freq"):
                raise ModelLoadError(f"cannot rebuild module {name} ({type(module).__name__}) outside the checkpoint")
            with device:
                model.set_submodule(name, type(module)(config=config))


def _compile_layers(model: nn.Module, family: Family, start: int = 0) -> None:
    """Swap loaded HF layers ``start..`` for the modules the engine runs (our own math for Llama)."""
    layers = family.layers(model)
    for index in range(start, len(layers)):
        layers[index] = family.compile_layer(layers[index], model.config, index).eval().requires_grad_(False)


def _tie_output_embeddings(model: nn.Module, config: Any) -> None:
    if getattr(config, "tie_word_embeddings", False):
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def _load_into(
    loaded_module: nn.Module,
    prefix: str,
    checkpoint: Checkpoint,
    base_model_prefix: str,
    dtype: torch.dtype,
    device: torch.device,
    skip: Iterable[str] = (),
) -> int:
    """Assign checkpoint tensors to every parameter/buffer of ``loaded_module``; return bytes read."""
    wanted: dict[str, str] = {}
    missing: list[str] = []
    skip = set(skip)
    for key in loaded_module.state_dict():
        full_key = prefix + key
        if full_key in skip:
            continue
        ckpt_key = _checkpoint_key(full_key, checkpoint, base_model_prefix)
        if ckpt_key is None:
            missing.append(full_key)
        else:
            wanted[key] = ckpt_key
    if missing:
        raise ModelLoadError(f"checkpoint is missing tensors: {', '.join(missing[:5])}")
    tensors, bytes_read = checkpoint.read(wanted, dtype, device)
    loaded_module.load_state_dict(tensors, strict=False, assign=True)
    return bytes_read


def _layer_bytes(checkpoint: Checkpoint, family: Family, base_model_prefix: str, num_layers: int) -> list[int]:
    sizes = [0] * num_layers
    stripped_layers = family.layers_path.removeprefix(base_model_prefix + ".")
    for name, nbytes in checkpoint.nbytes.items():
        for path in (family.layers_path, stripped_layers):
            if name.startswith(path + "."):
                index = int(name[len(path) + 1 :].split(".", 1)[0])
                if index < num_layers:
                    sizes[index] += nbytes
                break
    return sizes


def load_model(
    ref: str,
    layers: int | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    name: str | None = None,
) -> LoadedModel:
    """Load the first ``layers`` decoder layers (all if None) of the model behind ``ref``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    resolved = resolve(ref)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    try:
        config = AutoConfig.from_pretrained(resolved.path)
    except (OSError, ValueError) as error:
        raise ModelRefError(f"cannot read the config of model {ref!r} at {resolved.path}: {error}") from None
    family = family_for(config.model_type)
    if family is None:
        raise ModelLoadError(
            f"model {ref!r} has architecture {config.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    total = config.num_hidden_layers
    num_layers = total if layers is None else layers
    if not 1 <= num_layers <= total:
        raise ModelLoadError(f"layers must be between 1 and {total} for model {ref!r}, got {layers}")

    checkpoint = Checkpoint.open(resolved.path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_truncated_config(config, num_layers), dtype=dtype)
    base_prefix = model.base_model_prefix
    skip = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    bytes_loaded = _load_into(model, "", checkpoint, base_prefix, dtype, device, skip=skip)
    _tie_output_embeddings(model, config)
    _materialize_buffers(model, model.config, device)
    model.eval().requires_grad_(False)
    hf_layer_type = type(family.layers(model)[0])
    _compile_layers(model, family)
    if (resolved.path / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(resolved.path)

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    return LoadedModel(
        name=name or ref,
        ref=resolved,
        model=model,
        tokenizer=tokenizer,
        family=family,
        config=config,
        checkpoint=checkpoint,
        dtype=dtype,
        device=device,
        bytes_loaded=bytes_loaded,
        num_layers_total=total,
        layer_bytes=_layer_bytes(checkpoint, family, base_prefix, total),
        hf_layer_type=hf_layer_type,
    )


def resize_layers(loaded: LoadedModel, num_layers: int) -> int:
    """Grow (reading only the new layers' tensors) or shrink the decoder stack; return bytes read."""
    total = loaded.num_layers_total
    if not 1 <= num_layers <= total:
        raise ModelLoadError(f"layers must be between 1 and {total}, got {num_layers}")
    layers = loaded.layers
    current = len(layers)
    bytes_read = 0
    live_config = loaded.model.config  # shared by the existing layers; keeps attention settings
    live_config.num_hidden_layers = num_layers
    if isinstance(getattr(loaded.config, "layer_types", None), list):
        live_config.layer_types = loaded.config.layer_types[:num_layers]
    if num_layers < current:
        del layers[num_layers:]
    for index in range(current, num_layers):
        with torch.device("meta"):
            layer = loaded.hf_layer_type(live_config, layer_idx=index)
        bytes_read += _load_into(
            layer,
            loaded.family.layer_prefix(index),
            loaded.checkpoint,
            loaded.model.base_model_prefix,
            loaded.dtype,
            loaded.device,
        )
        layers.append(layer.eval().requires_grad_(False))
    _compile_layers(loaded.model, loaded.family, start=current)
    loaded.bytes_loaded += bytes_read
    return bytes_read
