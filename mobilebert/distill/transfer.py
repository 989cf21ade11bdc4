"""Teacher -> student initialisation and what each stage trains (paper §3.5, Figure 2; GR run_pretraining.py).

* `copy_from_teacher`: every tensor outside the encoder whose name and shape match is copied from the
  teacher (word/position/type embeddings, `embedding_transformation`, the MLM and NSP heads), as GR's
  `init_embedding=True`. A norm is copied only between norms of the same kind: the teacher's embedding
  LayerNorm is not a NoNorm, and GR does not copy it either (their TF names differ).
* `stage_plan`: for each kind of stage, which parameters train and at what LR multiple:
    teacher, bare, akt, pd   everything
    jkt                      all encoder layers; embeddings and heads frozen (GR gives them LR 0)
    pkt stage l              layer l at `active_lr_scale` (GR 3x); layers below frozen (`freeze`) or at
                             `lower_lr_scale` (GR 0.3x = 0.1 x 3x, `reduced_lr`); layers above, embeddings
                             and heads frozen.
  Frozen parameters get `requires_grad=False`, so no gradient is computed for them, DDP does not
  synchronise them and the optimizer never sees them.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

_LAYER = re.compile(r"\.encoder\.layer\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """0-based encoder layer of a parameter name, or None outside the encoder."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


@torch.no_grad()
def copy_from_teacher(teacher: nn.Module, student: nn.Module) -> list[str]:
    """Copy matching non-encoder tensors teacher -> student in place; returns the copied names."""
    t_state = teacher.state_dict()
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    copied = []
    for name, tensor in student.state_dict().items():
        if layer_index(name) is not None or ".encoder." in name:
            continue
        src = t_state.get(name)
        if src is None or src.shape != tensor.shape:
            continue
        owner = name.rsplit(".", 1)[0]
        if type(s_mods.get(owner)) is not type(t_mods.get(owner)):
            continue  # LayerNorm -> NoNorm: different functions, not copied (as GR)
        tensor.copy_(src)
        copied.append(name)
    return copied


def freeze(model: nn.Module) -> nn.Module:
    """No gradients for any parameter (the teacher during KT and PD)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def stage_plan(kind: str, num_layers: int, layer: int | None = None, lower_layers: str = "reduced_lr",
               active_lr_scale: float = 3.0, lower_lr_scale: float = 0.3) -> Callable[[str], float | None]:
    """`name -> LR multiple` for a stage; None means frozen. `layer` is 1-based (PKT stage l)."""
    if kind in ("teacher", "bare", "akt", "pd"):
        return lambda name: 1.0
    if kind == "jkt":
        return lambda name: 1.0 if layer_index(name) is not None else None
    if kind == "pkt":
        active = layer - 1

        def scale(name: str) -> float | None:
            i = layer_index(name)
            if i is None or i > active:
                return None
            if i == active:
                return active_lr_scale
            return lower_lr_scale if lower_layers == "reduced_lr" else None

        return scale
    raise ValueError(f"unknown stage kind {kind!r}")


def apply_plan(model: nn.Module, scale: Callable[[str], float | None]) -> tuple[int, int]:
    """Set requires_grad from the plan; returns (trainable, total) parameter counts."""
    trainable = total = 0
    seen = set()
    for name, p in model.named_parameters():
        on = bool(scale(name))
        p.requires_grad_(on)
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if on else 0
    return trainable, total
