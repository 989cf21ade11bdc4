"""Atomic, resumable training-state checkpoints (issue 3 item 7; issue 10 items 1, 2, 5, 9).

Layout of one run folder:
    RUN/checkpoints/<stage>-step-0001000/     one checkpoint; the newest K are kept
        config.json, model.safetensors        the trained model in Hugging Face layout (`save_pretrained`)
        training_state.pt                      optimizer, scheduler, per-rank python/numpy/torch(/CUDA) RNG
                                               states, step, stage, data position, caller extras
        settings.yaml                          the resolved run settings
        meta.json                              {"step", "stage", "data_position", "seq", "time"}
    RUN/checkpoints/latest                     one line: the folder name of the newest complete checkpoint

Why it is crash-safe: a checkpoint is written into a temporary folder beside it (`mobilebert.atomic.atomic_dir`),
every file is fsync'd, and only then the folder is renamed into place (atomic on POSIX). The `latest` pointer is
itself written atomically, and only after the folder rename. A SIGKILL at any moment therefore leaves either the
previous `latest` (pointing at a complete folder) or the new one, never a half-written checkpoint; stale
temporaries are removed by the next save. A full disk is one `WriteError` naming the path (nothing written).

Why loading runs no code: `training_state.pt` holds only tensors, dicts, lists, tuples, ints, floats, strings
and None (RNG states are converted to tensors and plain numbers, `_plain` rejects anything else at save time),
and it is read with `torch.load(weights_only=True)`. A file holding other objects (a planted `__reduce__`
payload, or a checkpoint written by mobilebert before this format, whose numpy RNG state is a pickled array)
is refused with one line naming it.

A damaged newest checkpoint (truncated or empty file, say after copying a run folder from a full disk) is
skipped with a message on stderr and the previous complete one is used; when none is readable the error names
the damaged file.

Every rank calls `save_checkpoint` (RNG states are gathered from all ranks); rank 0 alone writes.

API:
    checkpoint_name(stage, step) -> str
    save_checkpoint(run_dir, name, *, model, optimizer=None, scheduler=None, step, stage="",
                    data_position=0, settings=None, extra=None, keep=3) -> Path | None
    latest_checkpoint(run_dir) -> Path | None          the newest readable one (damaged ones skipped, said so)
    load_checkpoint(path, *, model=None, optimizer=None, scheduler=None, restore_rng=True) -> dict
    load_model_weights(model, folder) -> None
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from mobilebert import atomic as A
from mobilebert.engine import distributed as D
from mobilebert.errors import CheckpointError

STATE_FILE = "training_state.pt"
WEIGHTS_FILE = "model.safetensors"
FORMAT = 2  # 1: pickled numpy/python RNG objects (refused now); 2: plain values only (weights_only=True)


def checkpoint_name(stage: str, step: int) -> str:
    return f"{stage or 'train'}-step-{step:07d}"


def rng_state() -> dict:
    """Every random stream training uses, as tensors and plain numbers (loadable with weights_only=True).

    python: random.getstate() = (version, 625 ints, gauss_next); numpy: the legacy global MT19937 state
    ('MT19937', uint32[624], pos, has_gauss, cached_gaussian); torch: the CPU generator; cuda: one per device."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(obj: Any, where: str = "state") -> Any:
    """`obj` with numpy values turned into tensors / Python numbers; anything torch.load(weights_only=True)
    could not read back is an error here, at save time, rather than an unloadable checkpoint later."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):  # subclasses (np.float64 is a float subclass) would pickle as foreign objects
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot go into a checkpoint (only tensors and plain values)")


def save_model_weights(model: nn.Module, folder: Path) -> None:
    """HF layout (`config.json` + `model.safetensors`) via `save_pretrained` when the model has it."""
    model = D.unwrap(model)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        # a tensor tied to one already stored (same storage, offset and shape) is stored once, as safetensors'
        # save_model does; serialised in memory so that a full disk is our own OSError, not a Rust error
        state, seen = {}, set()
        for k, v in model.state_dict().items():
            where = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
            if where not in seen:
                seen.add(where)
                state[k] = v.detach().cpu().clone()
        A.write_bytes(folder / WEIGHTS_FILE, safetensors_bytes(state))


def load_model_weights(model: nn.Module, folder: str | Path) -> None:
    """Load `folder/model.safetensors` into `model` in place; every parameter must be found.

    A key absent from the file is accepted only if it shares storage with a key that is present (tied
    decoder/embedding weights, which `save_pretrained` stores once).
    """
    model = D.unwrap(model)
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: damaged or truncated ({e})") from None
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{path}: tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                              f"the model expects {tuple(own[bad[0]].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    present_ptrs = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in missing if own[k].data_ptr() not in present_ptrs and not k.endswith("position_ids")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def save_checkpoint(run_dir: str | Path, name: str, *, model: nn.Module, optimizer=None, scheduler=None,
                    step: int, stage: str = "", data_position: int = 0, settings: Any = None,
                    extra: dict | None = None, keep: int = 3) -> Path | None:
    """Write one checkpoint atomically and prune to the newest `keep`. Call on every rank.

    Returns the checkpoint folder on rank 0, None elsewhere.
    """
    # Gather every rank's RNG state so each resumes its own stream (dropout differs per rank).
    rngs = [rng_state()]
    if D.world_size() > 1:
        rngs = [None] * D.world_size()
        torch.distributed.all_gather_object(rngs, rng_state())
    if not D.is_main():
        D.barrier()
        return None
    _verified.clear()
    root = Path(run_dir) / "checkpoints"
    with A.disk_errors(root):
        root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.tmp"):  # leftovers of a crash mid-write (this process writes none concurrently)
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    seq = max((read_meta(d).get("seq", 0) for d in _complete(root)), default=0) + 1
    state = _plain({"format": FORMAT, "step": step, "stage": stage, "data_position": data_position, "rng": rngs,
                    "world_size": D.world_size(), "extra": extra or {},
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None})
    buf = io.BytesIO()  # serialised in memory: a full disk then surfaces as an OSError of our own write
    torch.save(state, buf)
    meta = {"step": step, "stage": stage, "data_position": data_position, "seq": seq, "time": time.time()}
    # re-saving the same step (e.g. interrupt right after a periodic save) replaces that folder
    with A.atomic_dir(root / name) as tmp:
        save_model_weights(model, tmp)
        A.write_bytes(tmp / STATE_FILE, buf.getvalue())
        if settings is not None:
            A.write_yaml(tmp / "settings.yaml", settings if isinstance(settings, dict) else dataclasses.asdict(settings))
        A.write_text(tmp / "meta.json", json.dumps(meta))
    A.crash_point(f"{root / 'latest'} <- {name}")  # crash tests: the folder is in place, the pointer is not
    A.write_text(root / "latest", name + "\n")
    _prune(root, keep, protect=name)
    D.barrier()
    return root / name


def read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _complete(root: Path) -> list[Path]:
    """Checkpoint folders of `root` (not temporaries), oldest first by save sequence."""
    done = [d for d in root.iterdir() if d.is_dir() and not d.name.endswith(".tmp") and (d / "meta.json").is_file()]
    return sorted(done, key=lambda d: read_meta(d).get("seq", 0))


def _prune(root: Path, keep: int, protect: str) -> None:
    if keep <= 0:
        return
    for d in _complete(root)[:-keep]:
        if d.name != protect:
            shutil.rmtree(d, ignore_errors=True)


def _pointed(root: Path) -> Path | None:
    """The folder `latest` names, as written (no checks); None without a usable pointer."""
    try:
        name = (root / "latest").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return root / name if name and "/" not in name else None


# training_state.pt contents read by latest_checkpoint's check, kept for the load_checkpoint that follows
_verified: dict[tuple, dict] = {}


def _read_state(file: Path) -> dict:
    """torch.load(weights_only=True) of a training state; CheckpointError(refused=True) for foreign objects."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{file}: damaged ({str(e).splitlines()[0]})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else "a Python object"
        if what.startswith("numpy"):
            err = CheckpointError(f"{file}: written by an older mobilebert (pickled numpy RNG state, {what}), "
                                  "which cannot be loaded without allowing it to run code; start the run again "
                                  "without --resume (or in another folder)")
        else:
            err = CheckpointError(f"{file}: refused: it holds {what}, which could run code when loaded; a "
                                  "training state holds only tensors and plain values")
        err.refused = True
        raise err from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{file}: damaged or truncated ({reason[:120]})") from None
    if not isinstance(state, dict) or "rng" not in state or "step" not in state:
        raise CheckpointError(f"{file}: damaged (not a training state)")
    return state


def _key(file: Path) -> tuple:
    st = file.stat()
    return (str(file.resolve()), st.st_size, st.st_mtime_ns)


def _check(folder: Path) -> None:
    """Read everything a resume needs from `folder`; CheckpointError naming the first damaged file."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: missing")
    if not read_meta(folder):
        raise CheckpointError(f"{folder / 'meta.json'}: missing or damaged")
    weights = folder / WEIGHTS_FILE
    try:
        with safe_open(str(weights), "pt") as f:  # parses the header and checks the file covers every tensor
            f.keys()
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: missing, damaged or truncated ({e})") from None
    file = folder / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    _verified.clear()
    _verified[_key(file)] = _read_state(file)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest readable checkpoint, or None when the run has no checkpoint yet (no `latest` pointer).

    When the one `latest` names is damaged, older complete ones are tried in turn (saying so on stderr); a
    refused file (foreign objects) or no readable checkpoint at all is a CheckpointError naming the file."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    first = _pointed(root)
    older = list(reversed(_complete(root)))  # newest first
    if first is not None:
        # never go past the pointer to a newer folder it does not announce
        limit = read_meta(first).get("seq", float("inf")) if first.is_dir() else float("inf")
        older = [first] + [d for d in older if d != first and read_meta(d).get("seq", 0) < limit]
    damaged: CheckpointError | None = None
    for folder in older:
        try:
            _check(folder)
        except CheckpointError as e:
            if getattr(e, "refused", False):
                raise
            damaged = damaged or e
            continue
        if damaged is not None and D.is_main():
            print(f"mobilebert: {damaged}; resuming from the previous checkpoint, {folder.name}",
                  file=sys.stderr, flush=True)
        return folder
    if damaged is None:
        damaged = CheckpointError(f"{pointer}: empty or damaged")
    raise CheckpointError(f"{damaged}; no older checkpoint in {root} is readable: start the run again "
                          "without --resume")


def load_checkpoint(path: str | Path, *, model: nn.Module | None = None, optimizer=None, scheduler=None,
                    restore_rng: bool = True) -> dict:
    """Restore what was saved into the given objects; returns the state dict (step, stage, data_position, extra)."""
    path = Path(path)
    file = path / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: not a training checkpoint (no {STATE_FILE})")
    state = _verified.pop(_key(file), None) or _read_state(file)
    if model is not None:
        load_model_weights(model, path)
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        rngs = state["rng"]
        # Same world size: each rank resumes its own stream; otherwise all take rank 0's.
        set_rng_state(rngs[D.rank()] if len(rngs) == D.world_size() else rngs[0])
    return state
