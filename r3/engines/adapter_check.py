"""Checking a LoRA adapter folder against the base model, before an engine loads it.

Neither engine checks enough by itself: peft reports a truncated weights file as a raw
`SafetensorError`, and vLLM copies LoRA tensors smaller than the model's modules into zero-padded
slots, so an adapter trained for a model with another hidden size is served without a word. Both
engines therefore run the same checks first, and refuse an adapter with an `EngineError` that
names what does not fit:

- `adapter_config.json` is readable, and where its `base_model_name_or_path` is a model folder
  on this machine, that model's dimensions are this model's;
- `adapter_model.safetensors` is whole, and every LoRA tensor in it fits a module of this model:
  `lora_A` is [r, in_features] and `lora_B` [out_features, r] (embeddings: `lora_embedding_A` is
  [r, num_embeddings], `lora_embedding_B` [embedding_dim, r]), with the config's `r` unless a
  `rank_pattern` gives modules ranks of their own. (peft would otherwise inject the adapter's
  layers into the model before finding that its weights do not fit them.) An adapter saved as a
  pickled `adapter_model.bin` is refused: its tensors cannot be checked without unpickling it.

The modules' shapes come from the model's config, built on the meta device (no weights, no
memory), so the vLLM engine, which holds no transformers model, checks the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from r3.engines.base import EngineError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# The config fields that decide a model's module shapes: the ones compared with the adapter's base.
_DIMENSIONS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim")

# A peft LoRA tensor's name: the module it adapts, and which factor it is.
_LORA_TENSOR = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\."
                          r"(?P<factor>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$")


@dataclass(frozen=True)
class ModuleShape:
    """A LoRA-able module's sizes: a Linear's (in, out) features, an Embedding's (num, dim)."""

    inputs: int
    outputs: int
    embedding: bool = False


def module_shapes(config: PretrainedConfig) -> dict[str, ModuleShape]:
    """Every Linear and Embedding module of the model `config` describes, by its name in the model
    (as peft names the modules it adapts, e.g. `model.layers.0.self_attn.q_proj`)."""
    with torch.device("meta"):  # the modules and their shapes, without allocating their weights
        model = AutoModelForCausalLM.from_config(config)
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name] = ModuleShape(module.in_features, module.out_features)
        elif isinstance(module, torch.nn.Embedding):
            shapes[name] = ModuleShape(module.num_embeddings, module.embedding_dim, embedding=True)
    return shapes


class AdapterChecker:
    """Checks adapter folders against one base model (`model_path`: a folder or a hub id)."""

    def __init__(self, model_path: str) -> None:
        config = AutoConfig.from_pretrained(model_path)
        self._dimensions = _dimensions(config.to_dict())
        self.module_shapes = module_shapes(config)

    def check(self, name: str, path: Path) -> int:
        """The LoRA rank (`r`) of adapter `name` in folder `path`, once it is known to fit this model.

        Raises EngineError naming the problem: no or unreadable `adapter_config.json`, a base model
        of other dimensions, no, truncated or corrupt `adapter_model.safetensors`, or a LoRA tensor
        for a module this model lacks or of a shape that does not fit its module.
        """
        config = self._read_config(name, path)
        self._check_base_model(name, config.get("base_model_name_or_path"))
        self._check_tensors(name, path / WEIGHTS_FILE, None if config.get("rank_pattern") else config["r"])
        return config["r"]

    def _read_config(self, name: str, path: Path) -> dict[str, Any]:
        config_file = path / CONFIG_FILE
        if not config_file.is_file():
            raise EngineError(f"{path} is not a peft adapter folder (no {CONFIG_FILE})")
        try:
            config = json.loads(config_file.read_text())
            config["r"] = int(config["r"])
        except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
            raise EngineError(f"cannot read the {CONFIG_FILE} of adapter {name!r}: {error!r}") from error
        return config

    def _check_base_model(self, name: str, base: object) -> None:
        """Compare with the adapter's base model where it is a model folder here; a hub id or a
        path on another machine says nothing checkable, and the tensors are checked anyway."""
        if not isinstance(base, str) or not (Path(base) / "config.json").is_file():
            return
        try:
            theirs = _dimensions(json.loads((Path(base) / "config.json").read_text()))
        except ValueError:
            return
        differing = [f"{key} {theirs[key]} (this model: {self._dimensions[key]})"
                     for key in theirs.keys() & self._dimensions.keys() if theirs[key] != self._dimensions[key]]
        if differing:
            raise EngineError(f"adapter {name!r} was trained for another model ({base}): " + ", ".join(sorted(differing)))

    def _check_tensors(self, name: str, weights: Path, rank: int | None) -> None:
        """Every LoRA tensor in `weights` against its module, and against `rank` unless it is None."""
        if not weights.is_file():
            raise EngineError(f"{weights.parent} has no adapter weights ({WEIGHTS_FILE})")
        try:
            with safe_open(weights, framework="pt") as tensors:
                shapes = {key: tensors.get_slice(key).get_shape() for key in tensors.keys()}
        except (SafetensorError, OSError) as error:
            raise EngineError(f"cannot read the weights of adapter {name!r} ({weights}): {error}") from error
        for key, shape in shapes.items():
            if match := _LORA_TENSOR.match(key):
                self._check_tensor(name, key, shape, match["module"], match["factor"], rank)

    def _check_tensor(self, name: str, key: str, shape: list[int], module: str, factor: str, rank: int | None) -> None:
        """A factor's outer size must be its module's (A's last dimension its inputs, B's first its
        outputs) and its inner size the rank (A's first dimension, B's last)."""
        expected = self.module_shapes.get(module)
        if expected is None:
            raise EngineError(f"adapter {name!r} does not fit this model: tensor {key} is for module {module}, "
                              "which this model does not have")
        if len(shape) != 2:
            raise EngineError(f"adapter {name!r} is malformed: tensor {key} has shape {shape}, not [rows, columns]")
        is_a = factor in ("lora_A.weight", "lora_embedding_A")
        inner, outer = shape if is_a else reversed(shape)  # A: [r, inputs]; B: [outputs, r]
        wanted, what = (expected.inputs, "inputs") if is_a else (expected.outputs, "outputs")
        if outer != wanted:
            raise EngineError(f"adapter {name!r} does not fit this model: tensor {key} has shape {shape}, "
                              f"but module {module} has {wanted} {what}")
        if rank is not None and inner != rank:
            raise EngineError(f"adapter {name!r} is inconsistent: tensor {key} has shape {shape}, "
                              f"but its {CONFIG_FILE} says r={rank}")


def _dimensions(config: dict[str, Any]) -> dict[str, Any]:
    return {key: config[key] for key in _DIMENSIONS if config.get(key) is not None}
