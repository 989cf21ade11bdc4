"""Optimizers and learning-rate schedules (paper Sec. 4 "Implementation"; GR `lamb_optimizer.py`, `optimization.py`).

MobileBERT's teacher and student were trained with LAMB (You et al. 2019) exactly as the official
TF1 code implements it, which differs from most PyTorch LAMBs in three ways we reproduce:
  * no bias correction of the Adam moments;
  * weight decay is *decoupled* and added to the Adam direction before the trust ratio;
  * parameters whose names contain `LayerNorm`/`layer_norm` (NoNorm included, its parameters are
    named `LayerNorm` too) or `bias` get neither weight decay nor the trust ratio.
The trust ratio is ||w|| / ||update||, and 1.0 when either norm is zero.

Schedules follow GR `create_optimizer`: linear warm-up `lr * step / warmup` for `step < warmup`, else
linear decay from `lr` at step 0 to `lr * end_lr_ratio` at `total_steps` (so warm-up "overrides" the
start of the decay, as in GR). The PKT "background" schedule of GR `distill_util.get_background_lr`
(10% warm-up of each phase, then a square-root decay to 0.9) is `pkt_background_schedule`.

API:
    param_groups(model, weight_decay, lr_scale=None) -> list[dict]
    Lamb(params, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, bias_correction=False, foreach=None)
    build_optimizer(model, name, lr, weight_decay=0.01, *, betas=(0.9, 0.999), eps=1e-6, lr_scale=None)
    linear_schedule(optimizer, warmup_steps, total_steps, end_lr_ratio=1e-4) -> LambdaLR
    pkt_background_schedule(optimizer, steps_per_phase) -> LambdaLR
    build_schedule(optimizer, name, warmup_steps, total_steps, end_lr_ratio=1e-4) -> LambdaLR
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mobilebert.errors import ConfigError

# Substrings that exclude a parameter from weight decay and from the LAMB trust ratio (GR uses the same
# list for both: "teacher" is handled by never giving teacher parameters to the optimizer).
NO_DECAY_KEYS = ("LayerNorm", "layer_norm", "bias")
OPTIMIZERS = ("lamb", "adamw")
SCHEDULES = ("linear", "constant", "pkt_official")


def no_decay(name: str) -> bool:
    """True for norm (LayerNorm and NoNorm) parameters and biases."""
    return any(key in name for key in NO_DECAY_KEYS)


def param_groups(model: nn.Module, weight_decay: float,
                 lr_scale: Callable[[str], float | None] | None = None) -> list[dict]:
    """Split the trainable parameters of `model` into optimizer groups.

    Args:
        model: the module to train; parameters with `requires_grad=False` are left out.
        weight_decay: decay for ordinary weights; norm parameters and biases get 0.
        lr_scale: optional `name -> multiplier` (PKT's reduced LR for lower layers). A multiplier of
            None or 0 leaves the parameter out of the optimizer entirely.
    Returns:
        groups with keys `params`, `weight_decay`, `exclude_from_trust_ratio`, `lr_scale`; one group per
        (decay, multiplier) pair, in first-seen order so the optimizer state layout is deterministic.
    """
    groups: dict[tuple[bool, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0 if lr_scale is None else lr_scale(name)
        if not scale:
            continue
        excluded = no_decay(name)
        key = (excluded, float(scale))
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if excluded else weight_decay,
                           "exclude_from_trust_ratio": excluded, "lr_scale": float(scale)}
        groups[key]["params"].append(p)
    return list(groups.values())


class Lamb(torch.optim.Optimizer):
    """LAMB with the official MobileBERT/BERT semantics (GR `LAMBOptimizer.apply_gradients`).

    Per parameter w with gradient g (m, v start at 0):
        m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
        u = m / (sqrt(v) + eps) + weight_decay * w
        r = ||w|| / ||u||  (1 if either norm is 0, or if the group has `exclude_from_trust_ratio`)
        w = w - lr * r * u
    `bias_correction=True` divides m and v by (1 - b^t) first (the LAMB paper's variant); GR does not.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, bias_correction: bool = False,
                 foreach: bool | None = None):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid LAMB hyper-parameters lr={lr} betas={betas} eps={eps}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, exclude_from_trust_ratio=False)
        super().__init__(params, defaults)
        # foreach: one multi-tensor kernel per operation over all of a group's parameters instead of ~12
        # kernels per parameter (MobileBERT has ~1,100 parameter tensors: on a GPU the per-parameter loop
        # alone costs more launches than a whole forward/backward). Same arithmetic; the loop is kept as
        # the readable reference (`foreach=False`) and tests compare the two. None (default): foreach on
        # GPU; the loop on CPU, where benchmarks/optimizer_step.py measures it faster (docs/benchmarks.md: the
        # CPU multi-tensor ops loop per tensor anyway, with more temporaries).
        self.foreach = foreach

    def _step_state(self, p: torch.Tensor) -> dict:
        """p's moments (created on its first step) with the step count advanced by one."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lamb does not support sparse gradients")
            if params:
                foreach = params[0].is_cuda if self.foreach is None else self.foreach
                (self._group_foreach if foreach else self._group_loop)(group, params)
        return loss

    def _group_loop(self, group: dict, params: list[torch.Tensor]) -> None:
        b1, b2 = group["betas"]
        for p in params:
            g, state = p.grad, self._step_state(p)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            if group["bias_correction"]:
                mhat = m / (1 - b1 ** state["step"])
                vhat = v / (1 - b2 ** state["step"])
            else:
                mhat, vhat = m, v
            update = mhat / (vhat.sqrt() + group["eps"])
            if group["weight_decay"]:
                update.add_(p, alpha=group["weight_decay"])
            if group["exclude_from_trust_ratio"]:
                p.add_(update, alpha=-group["lr"])
                continue
            # Trust ratio as a tensor (no host sync): 1.0 where either norm is zero.
            w_norm = torch.linalg.vector_norm(p)
            u_norm = torch.linalg.vector_norm(update)
            ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
            p.sub_(update * (ratio * group["lr"]))

    def _group_foreach(self, group: dict, params: list[torch.Tensor]) -> None:
        b1, b2 = group["betas"]
        grads = [p.grad for p in params]
        states = [self._step_state(p) for p in params]
        ms, vs = [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, grads, alpha=1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        if group["bias_correction"]:
            mhat = torch._foreach_div(ms, [1 - b1 ** st["step"] for st in states])
            vhat = torch._foreach_div(vs, [1 - b2 ** st["step"] for st in states])
        else:
            mhat, vhat = ms, vs
        denom = torch._foreach_sqrt(vhat)
        torch._foreach_add_(denom, group["eps"])
        updates = torch._foreach_div(mhat, denom)
        if group["weight_decay"]:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        if group["exclude_from_trust_ratio"]:
            torch._foreach_add_(params, updates, alpha=-group["lr"])
            return
        w_norm = torch.stack(torch._foreach_norm(params))   # (N,) one norm per parameter tensor
        u_norm = torch.stack(torch._foreach_norm(updates))
        ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
        torch._foreach_mul_(updates, list((ratio * group["lr"]).unbind()))
        torch._foreach_sub_(params, updates)


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.01, *,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                    lr_scale: Callable[[str], float | None] | None = None) -> torch.optim.Optimizer:
    """LAMB or AdamW over `param_groups(model, weight_decay, lr_scale)`; each group's lr is `lr * lr_scale`.

    AdamW is torch's (with bias correction); its groups carry the same exclusions from weight decay.
    """
    groups = param_groups(model, weight_decay, lr_scale)
    if not groups:
        raise ConfigError("optimizer: the model has no trainable parameters")
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps)
    if name == "adamw":
        # fused (one kernel for the whole update) where every parameter is on a GPU; foreach elsewhere
        fused = all(p.is_cuda for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
    raise ConfigError(f"optim.name: {name!r} is not one of {', '.join(OPTIMIZERS)}")


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    end_lr_ratio: float = 1e-4) -> LambdaLR:
    """GR schedule: `step/warmup` during warm-up, else linear decay 1 -> end_lr_ratio over total_steps."""
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        frac = min(step, total) / total
        return (1.0 - end_lr_ratio) * (1.0 - frac) + end_lr_ratio

    return LambdaLR(optimizer, factor)


def constant_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int = 0) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: step / warmup_steps if step < warmup_steps else 1.0)


def pkt_background_schedule(optimizer: torch.optim.Optimizer, steps_per_phase: int) -> LambdaLR:
    """GR `get_background_lr` for one PKT phase: min(0.9 + 0.1*sqrt(1 - s/P), 10*s/P), s in [0, P)."""
    P = max(1, steps_per_phase)

    def factor(step: int) -> float:
        if P == 1:
            return 1.0
        s = min(step % P, P)
        return min(0.9 + 0.1 * math.sqrt(max(0.0, 1.0 - s / P)), 10.0 * s / P)

    return LambdaLR(optimizer, factor)


def build_schedule(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int,
                   end_lr_ratio: float = 1e-4) -> LambdaLR:
    """`linear` (warm-up + decay), `constant` (warm-up + hold) or `pkt_official` (GR PKT background)."""
    if name == "linear":
        return linear_schedule(optimizer, warmup_steps, total_steps, end_lr_ratio)
    if name == "constant":
        return constant_schedule(optimizer, warmup_steps)
    if name == "pkt_official":
        return pkt_background_schedule(optimizer, total_steps)
    raise ConfigError(f"optim.schedule: {name!r} is not one of {', '.join(SCHEDULES)}")
