"""Checkpoints in the Hugging Face layout: `config.json` + `model.safetensors`.

State-dict keys are transformers' own (MobileBERT, or BERT for `model_type="bert"`), so a folder saved
here loads in `transformers` and a Hub download such as `google/mobilebert-uncased` loads here with no
conversion. `pytorch_model.bin` is read with `torch.load(weights_only=True)`, which never runs code from
the file. Missing and unexpected keys are reported by name; a shape mismatch is an error naming the tensor.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from mobilebert import atomic
from mobilebert.config import MobileBertConfig
from mobilebert.errors import CheckpointError

log = logging.getLogger("mobilebert")
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
# Tied to the word embeddings and the MLM bias: never stored, re-tied on load (as transformers does).
TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
# Parts of other heads a base model or a different head may meet in a checkpoint and ignore.
_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.")


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)  # in the model, not in the file: left as initialised
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model: ignored

    def __str__(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing (newly initialised): {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected (ignored): {', '.join(self.unexpected)}")
        return "; ".join(parts) or "all keys matched"


def save_pretrained(model: torch.nn.Module, folder: str | os.PathLike) -> None:
    """Save `model` as config.json + model.safetensors (tied tensors dropped, as transformers does)."""
    folder = Path(folder)
    with atomic.disk_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
    cfg: MobileBertConfig = model.config
    name = type(model).__name__
    if cfg.model_type == "bert":
        name = name.replace("MobileBert", "Bert")
    cfg = cfg.replace(architectures=[name])
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in TIED_KEYS}
    # serialised in memory and written by mobilebert.atomic: crash-safe, usual permissions, a full disk is one line
    atomic.write_bytes(folder / WEIGHTS_NAME, safetensors_bytes(state, metadata={"format": "pt"}))
    atomic.write_json(folder / CONFIG_NAME, cfg.to_hf_dict(), indent=2, sort_keys=True)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, a .bin file, a sharded index, or a folder holding one of them."""
    path = Path(path)
    if path.is_dir():
        for name in (WEIGHTS_NAME, WEIGHTS_NAME + ".index.json", LEGACY_WEIGHTS_NAME, LEGACY_WEIGHTS_NAME + ".index.json"):
            if (path / name).is_file():
                return read_state_dict(path / name)
        raise CheckpointError(f"{path}: no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME} in this folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: not a valid shard index ({e})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors of many kinds; weights_only refuses code objects
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({str(e).splitlines()[0]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return state


def _normalize_keys(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map the names found in HF/BERT checkpoints onto `model`'s names."""
    prefix = model.config.base_prefix
    expected = set(model.state_dict())
    has_prefix = any(k.startswith(prefix + ".") for k in expected)
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue  # a buffer, persistent in older transformers versions
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        for other in ("mobilebert.", "bert."):
            if key.startswith(other) and other != prefix + ".":
                key = prefix + "." + key[len(other):]
        if has_prefix and not key.startswith(prefix + ".") and not key.startswith(_HEAD_PREFIXES):
            key = f"{prefix}.{key}"  # a bare base-model checkpoint loaded into a model with heads
        elif not has_prefix and key.startswith(prefix + "."):
            key = key[len(prefix) + 1:]  # a checkpoint with heads loaded into the base model
        out[key] = value
    return out


def load_state_dict_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> LoadReport:
    """Copy `state` into `model`; shape mismatches are errors naming the tensor; returns what did not match."""
    state = _normalize_keys(state, model)
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            hint = ""
            if key.startswith(("classifier.", "qa_outputs.")):
                hint = " (the checkpoint's task head has a different number of labels)"
            raise CheckpointError(f"{source}: tensor {key} has shape {tuple(value.shape)} but the model expects "
                                  f"{tuple(own[key].shape)}{hint}")
    result = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    tie = getattr(model, "tie_weights", None)
    if tie is not None:
        tie()
    missing = [k for k in result.missing_keys if k not in TIED_KEYS]
    unexpected = sorted(k for k in state if k not in own)
    return LoadReport(missing=missing, unexpected=unexpected)


# Heads a checkpoint may carry, each known by one tensor that every variant of it has (MobileBERT and BERT).
HEAD_TENSORS = {"mlm": "cls.predictions.transform.dense.weight", "nsp": "cls.seq_relationship.weight",
                "classifier": "classifier.weight", "qa": "qa_outputs.weight"}
HEAD_NAMES = {"mlm": "masked-LM head (cls.predictions)", "nsp": "next-sentence head (cls.seq_relationship)",
              "classifier": "classification head (classifier)", "qa": "span head (qa_outputs)"}
# The head each architecture's own task needs (a base model needs none).
ARCHITECTURE_HEADS = {"ForPreTraining": {"mlm", "nsp"}, "ForMaskedLM": {"mlm"}, "ForNextSentencePrediction": {"nsp"},
                      "ForSequenceClassification": {"classifier"}, "ForMultipleChoice": {"classifier"},
                      "ForTokenClassification": {"classifier"}, "ForQuestionAnswering": {"qa"}}


def checkpoint_keys(path: str | os.PathLike) -> set[str]:
    """Tensor names in a checkpoint (folder, .safetensors, .bin or shard index), read without the tensors
    where the format allows it."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        for name in (WEIGHTS_NAME, WEIGHTS_NAME + ".index.json", LEGACY_WEIGHTS_NAME, LEGACY_WEIGHTS_NAME + ".index.json"):
            if (path / name).is_file():
                return checkpoint_keys(path / name)
        raise CheckpointError(f"{path}: no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME} in this folder")
    if path.name.endswith(".index.json"):
        try:
            return set(json.loads(path.read_text())["weight_map"])
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(f"{path}: not a valid shard index ({e})") from None
    if path.suffix == ".safetensors" and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as fh:
                return set(fh.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return set(read_state_dict(path))


def checkpoint_heads(path: str | os.PathLike) -> set[str]:
    """Which heads ("mlm", "nsp", "classifier", "qa") a checkpoint actually holds weights for."""
    keys = checkpoint_keys(path)
    return {head for head, tensor in HEAD_TENSORS.items() if any(k == tensor or k.endswith("." + tensor) for k in keys)}


def missing_heads(path: str | os.PathLike, needed) -> set[str]:
    """The heads of `needed` whose weights are not in the checkpoint (they would be initialised at random)."""
    return set(needed) - checkpoint_heads(path)


def require_heads(path: str | os.PathLike, needed, key: str, why: str = "") -> None:
    """Refuse a checkpoint without the trained heads the caller uses: one CheckpointError naming each missing
    head, `key` (the setting or argument that named the checkpoint) and, if given, what the head is used for."""
    missing = missing_heads(path, needed)
    if missing:
        cfg_path = Path(path) / CONFIG_NAME if Path(path).is_dir() else Path(path).parent / CONFIG_NAME
        arch = ""
        if cfg_path.is_file():
            try:
                archs = json.loads(cfg_path.read_text(encoding="utf-8")).get("architectures") or []
                arch = f" (a {archs[0]} checkpoint)" if archs else ""
            except (ValueError, OSError, AttributeError):
                pass
        names = ", ".join(HEAD_NAMES[h] for h in sorted(missing))
        raise CheckpointError(f"{key}: {path}{arch} has no trained {names}; it would be initialised at random"
                              + (f", but {why}" if why else ""))


def head_for_architecture(arch: str) -> set[str]:
    """The heads an architecture name (e.g. MobileBertForSequenceClassification) needs for its own task."""
    return next((heads for suffix, heads in ARCHITECTURE_HEADS.items() if arch.endswith(suffix)), set())


def load_config(path: str | os.PathLike) -> MobileBertConfig:
    path = Path(path)
    cfg_path = path / CONFIG_NAME if path.is_dir() else path.parent / CONFIG_NAME
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder or file")
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: not found; a checkpoint folder needs config.json beside its weights")
    return MobileBertConfig.from_json_file(cfg_path)


def load_pretrained(cls, path: str | os.PathLike, config: MobileBertConfig | None = None,
                    dtype: torch.dtype | None = None, **config_overrides):
    """Build `cls` from the checkpoint's config (with overrides, e.g. num_labels=3) and load its weights.

    The model's `load_report` (a LoadReport) says which keys were missing or unexpected.
    dtype: the model's parameter dtype (float32 by default; float64 for exact parity checks)."""
    cfg = config or load_config(path)
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    model = cls(cfg)
    if dtype is not None:
        model = model.to(dtype)
    report = load_state_dict_into(model, read_state_dict(path), source=str(path))
    if report.missing or report.unexpected:
        log.warning("loading %s into %s: %s", path, cls.__name__, report)
    model.load_report = report
    return model

