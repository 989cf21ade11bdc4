"""Typed job configuration: dataclasses <- YAML files <- `key=value` overrides.

Every job (train, finetune, ...) declares its settings as nested dataclasses. `load_settings` reads a
YAML file onto them, applies dotted command-line overrides (`optim.lr=3e-4 data.seq_len=128`) and
checks every key and type, so a typo fails at parse time with a message naming the key. `dump_settings`
writes the resolved settings back to YAML next to every checkpoint.

The run vocabulary both recipes share (device, precision, warm-up, seed) is picked at the end:
`start_device`, `pick_device`, `pick_precision`, `warmup_steps`, `seed_everything`. The keys still differ
between the recipes for compatibility with existing config files: train's `run.device`, `run.precision`
(fp32/bf16/fp16), `*.optim.warmup_steps` (steps), `run.seed`; finetune's `train.device`, `train.precision`
(auto/fp32/bf16), `optim.warmup` (a fraction of the steps), `train.seed`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mobilebert.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and where safe, convert) `value` to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a valid {' or '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys are errors that name the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{prefix}{key}: unknown setting{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def parse_overrides(overrides: list[str]) -> dict:
    """Turn `["a.b=1", "c=x"]` into a nested dict; values are parsed as YAML scalars."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (for example optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml_load(raw) if raw != "" else ""
        except _DuplicateKey as e:
            raise ConfigError(f"override {item!r}: key {e.key!r} is given twice") from None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a group of settings")
        node[parts[-1]] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int):
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


def _check_unique_keys(node) -> None:
    """Refuse a key given twice in one mapping of a composed YAML node tree (PyYAML keeps the last silently, so
    a second `kt:` block would replace the first). Keys merged in with `<<:` may still be overridden."""
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    raise _DuplicateKey(key_node.value, line, seen[key_node.value])
                seen[key_node.value] = line
            _check_unique_keys(value_node)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_unique_keys(item)


def yaml_load(text: str):
    """yaml.safe_load that refuses duplicate keys (raises _DuplicateKey). The node tree is composed first (no
    object is constructed), checked, then the text is loaded with yaml.safe_load."""
    _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader))
    return yaml.safe_load(text)


def read_yaml(path: str | Path) -> dict:
    """A settings file as a dict; every problem (missing, not UTF-8, not YAML, a key given twice, empty,
    not a mapping) is one ConfigError naming the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml_load(text)
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: line {e.line}: key {e.key!r} is given twice (first at line {e.first}); "
                          "merge the two blocks") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        # An empty file would silently mean "all defaults", i.e. the paper-scale run.
        raise ConfigError(f"{path}: the config file is empty; put the settings in it (configs/ has examples), "
                          "an empty file would run every default")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def load_settings(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + dotted overrides -> validated dataclass `cls`."""
    data = read_yaml(path) if path is not None else {}
    data = merge(data, parse_overrides(overrides or []))
    where = f"{path}: " if path is not None else ""
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


# ----------------------------------------------------------------------------- shared value checks
# One rule and one message per concept, used by `train` (mobilebert.recipes.train_settings) and `finetune`
# (mobilebert.recipes.finetune_settings): a learning rate, a warm-up, a batch, a step count, a sequence length, a device.

def check_positive_int(key: str, value) -> None:
    """Batch sizes, step counts, grad_accum, epochs as integers: >= 1."""
    if value < 1:
        raise ConfigError(f"{key}: must be a positive integer, got {value}")


def check_positive(key: str, value: float) -> None:
    """A positive finite number (learning rates, epochs, temperatures, eps)."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}: must be a positive finite number, got {value}")


def check_non_negative(key: str, value: float) -> None:
    """A finite number >= 0 (weight decay, clipping norm, loss weights, warm-up steps)."""
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{key}: must be >= 0, got {value}")


def check_range(key: str, value: float, low: float, high: float, high_open: bool = False, what: str = "") -> None:
    """low <= value <= high (or < high); `what` says what the number means."""
    ok = math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        raise ConfigError(f"{key}: must be in [{low:g}, {high:g}{')' if high_open else ']'}{what}, got {value}")


def check_lr(key: str, lr: float) -> None:
    check_positive(key, lr)


def check_warmup(key: str, value: float, fraction: bool) -> None:
    """Warm-up is either a fraction of the run's steps (finetune `optim.warmup`, BERT's 10%: [0, 1)) or a
    number of steps (train `*.optim.warmup_steps`, GR's num_warmup_steps: >= 0)."""
    if fraction:
        check_range(key, value, 0.0, 1.0, high_open=True, what=" (a fraction of the training steps)")
    else:
        check_non_negative(key, value)


def check_batch(key: str, batch_size: int, accum_key: str, grad_accum: int) -> None:
    """A global batch split into grad_accum equal micro-batches."""
    check_positive_int(key, batch_size)
    check_positive_int(accum_key, grad_accum)
    if batch_size % grad_accum:
        raise ConfigError(f"{key}: {batch_size} is not divisible by {accum_key}={grad_accum}")


def check_seq_len(key: str, seq_len: int, max_positions: int | None = None, model: str = "") -> None:
    """A sequence length the model's position table covers (a longer one fails mid-training otherwise)."""
    if seq_len < 8:
        raise ConfigError(f"{key}: must be at least 8, got {seq_len}")
    if max_positions is not None and seq_len > max_positions:
        raise ConfigError(f"{key}: {seq_len} is longer than {model} max_position_embeddings={max_positions}")


def check_device(key: str, name: str) -> None:
    """auto, cpu, cuda or cuda:N, and available in this torch build on this machine."""
    import torch

    if name in ("auto", "cpu"):
        return
    if not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ConfigError(f"{key}: {name!r} is not one of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        why = "has no CUDA support" if torch.version.cuda is None else "sees no GPU"
        raise ConfigError(f"{key}: {name} is not available (this torch {torch.__version__} {why}); use cpu or auto")
    if ":" in name and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"{key}: {name} is not available (this machine has {torch.cuda.device_count()} GPU(s))")


def check_precision(key: str, precision: str, device_key: str, device: str) -> None:
    """fp16 needs a GPU; bf16 on a GPU needs one that supports it (Ampere or newer)."""
    import torch

    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if precision == "fp16" and not gpu:
        raise ConfigError(f"{key}: fp16 needs a GPU ({device_key}={device}); use bf16 or fp32 on CPU")
    if precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{key}: this GPU does not support bf16; use fp16 or fp32")


def check_new_folder(key: str, out: Path) -> None:
    """A fresh run's folder: absent or empty (a folder with a run in it needs --resume)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "holds another run" if (out / "settings.yaml").is_file() else "is not empty"
        raise ConfigError(f"{key}: {out} {what}; pass --resume to continue it or choose another {key}")


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; `overrides` mappings (model config overrides) stay whole values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "overrides":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_unchanged(obj: Any, saved_file: str | Path, free=frozenset()) -> None:
    """Refuse a --resume whose settings differ from the run's saved settings.yaml, naming the first key.

    `free`: dotted keys that may change between a run and its resume (they do not change the numbers)."""
    saved = flatten(read_yaml(saved_file))
    now = flatten(json.loads(json.dumps(to_dict(obj))))  # tuples -> lists, as YAML gives them back
    for key in sorted(set(saved) | set(now)):
        if key not in free and saved.get(key) != now.get(key):
            raise ConfigError(f"{key}: {now.get(key)!r} differs from the run being resumed "
                              f"({saved.get(key)!r} in {saved_file})")


def dump_settings(obj: Any, path: str | Path) -> None:
    from mobilebert.atomic import write_yaml  # crash-safe; a full disk is one line naming the file

    write_yaml(path, to_dict(obj))


# ---------------------------------------------------------------- the run vocabulary of both recipes

def start_device(setting: str):
    """This process's device for a training run (auto, cpu, cuda, cuda:N); joins torchrun's process group."""
    from mobilebert.engine import distributed as D

    return D.init(None if setting == "auto" else setting)


def pick_device(setting: str):
    """The device of a single-process job (evaluate, predict): auto is CUDA when available."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_precision(setting: str, device) -> str:
    """fp32, bf16 or fp16 as set; `auto` (finetune): bf16 autocast on a GPU that supports it, else fp32."""
    if setting != "auto":
        return setting
    import torch

    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def warmup_steps(value: float, total_steps: int, fraction: bool) -> int:
    """Warm-up steps from a fraction of the run's steps (finetune) or a number of steps (train); see check_warmup."""
    return int(value * total_steps) if fraction else int(value)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators (each recipe also draws its batches from its own seeded stream)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy takes 32-bit seeds; train's stage seeds (run.seed * 1_000_003 + ...) exceed them
    torch.manual_seed(seed)
