"""Atomic, resumable training-state checkpoints (issue 3 item 7).

Layout of one run folder:
    RUN/checkpoints/<stage>-step-0001000/     one checkpoint; the newest K are kept
        config.json, model.safetensors        the trained model in Hugging Face layout (`save_pretrained`)
        training_state.pt                      optimizer, scheduler, per-rank python/numpy/torch RNG states,
                                               step, stage, data position, caller extras
        settings.yaml                          the resolved run settings
        meta.json                              {"step", "stage", "data_position", "seq", "time"}
    RUN/checkpoints/latest                     one line: the folder name of the newest complete checkpoint

Why it is crash-safe: a checkpoint is written into `<name>.tmp/`, every file is flushed and fsync'd,
and only then the folder is renamed into place (`os.replace`, atomic on POSIX). The `latest` pointer is
itself written to `latest.tmp` and renamed, and only after the folder rename. A SIGKILL at any moment
therefore leaves either the previous `latest` (pointing at a complete folder) or the new one, never a
half-written checkpoint; stale `*.tmp` folders are removed by the next save.

Every rank calls `save_checkpoint` (RNG states are gathered from all ranks); rank 0 alone writes.

API:
    checkpoint_name(stage, step) -> str
    save_checkpoint(run_dir, name, *, model, optimizer=None, scheduler=None, step, stage="",
                    data_position=0, settings=None, extra=None, keep=3) -> Path | None
    latest_checkpoint(run_dir) -> Path | None
    load_checkpoint(path, *, model=None, optimizer=None, scheduler=None, restore_rng=True) -> dict
    load_model_weights(model, folder) -> None
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_model
from torch import nn

from mobilebert.engine import distributed as D
from mobilebert.errors import CheckpointError

STATE_FILE = "training_state.pt"
WEIGHTS_FILE = "model.safetensors"


def checkpoint_name(stage: str, step: int) -> str:
    return f"{stage or 'train'}-step-{step:07d}"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_model_weights(model: nn.Module, folder: Path) -> None:
    """HF layout (`config.json` + `model.safetensors`) via `save_pretrained` when the model has it."""
    model = D.unwrap(model)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        save_model(model, str(folder / WEIGHTS_FILE))  # handles tied (shared) tensors


def load_model_weights(model: nn.Module, folder: str | Path) -> None:
    """Load `folder/model.safetensors` into `model` in place; every parameter must be found.

    A key absent from the file is accepted only if it shares storage with a key that is present (tied
    decoder/embedding weights, which `save_pretrained` stores once).
    """
    model = D.unwrap(model)
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    state = load_file(str(path))
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
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.tmp"):  # leftovers of a crash mid-write
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    prev = latest_checkpoint(run_dir)
    seq = (read_meta(prev).get("seq", 0) + 1) if prev is not None else 1
    tmp = root / f"{name}.tmp"
    tmp.mkdir()
    save_model_weights(model, tmp)
    state = {"step": step, "stage": stage, "data_position": data_position, "rng": rngs,
             "world_size": D.world_size(), "extra": extra or {},
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    torch.save(state, tmp / STATE_FILE)
    if settings is not None:
        data = settings if isinstance(settings, dict) else dataclasses.asdict(settings)
        (tmp / "settings.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    meta = {"step": step, "stage": stage, "data_position": data_position, "seq": seq, "time": time.time()}
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    _fsync_tree(tmp)
    final = root / name
    if final.exists():  # re-saving the same step (e.g. interrupt right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(root / "latest", name + "\n")
    _prune(root, keep, protect=name)
    D.barrier()
    return final


def read_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _prune(root: Path, keep: int, protect: str) -> None:
    if keep <= 0:
        return
    done = [d for d in root.iterdir() if d.is_dir() and not d.name.endswith(".tmp") and (d / "meta.json").is_file()]
    done.sort(key=lambda d: read_meta(d).get("seq", 0))
    for d in done[:-keep]:
        if d.name != protect:
            shutil.rmtree(d, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder the `latest` pointer names, or None when the run has no checkpoint yet."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{pointer}: points at {folder.name}, which is missing or incomplete")
    return folder


def load_checkpoint(path: str | Path, *, model: nn.Module | None = None, optimizer=None, scheduler=None,
                    restore_rng: bool = True) -> dict:
    """Restore what was saved into the given objects; returns the state dict (step, stage, data_position, extra)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path}: not a training checkpoint (no {STATE_FILE})")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
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
