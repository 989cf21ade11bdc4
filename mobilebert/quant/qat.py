"""Quantization-aware training: 8-bit fake quantization at the official MobileBERT QAT points.

Paper §5 and the official code (`run_squad.py --use_quantized_training` with the `*_OPT_QAT.json`
config, `modeling.py`): QAT is only defined for the relu6 + NoNorm model (bounded activations, no
normalisation statistics), and inserts fake quantization

- on every dense layer's input: 8-bit asymmetric, moving-average range (EMA 0.999, initial [-6, 6]);
- on every dense weight: 8-bit symmetric, narrow range [-127, 127], last-value range;
- in NoNorm: on its input, on gamma and beta (as weights) and on gamma * x;
- on the attention scores (initial range [-6, 60]) and on the attention context.

Fake quantization rounds in the forward pass and passes gradients straight through inside the range
(`torch.fake_quantize_per_tensor_affine`). `prepare_qat(model)` converts a model in place by swapping
module classes, so parameter names, the optimizer and `save_pretrained` are unchanged (the ranges are
non-persistent buffers: a QAT checkpoint loads as a plain float model, and the int8 export calibrates
its own ranges). `strip_qat(model)` turns it back into the float model for export.

Deviation, stated: padded positions are still masked with the dtype's minimum, after the scores'
fake quantization, rather than with the official -6 additive mask, so a deployed model sees exactly
the attention of the float model (the -6 mask leaks attention to padding).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from mobilebert.errors import ConfigError
from mobilebert.model import MobileBertSelfAttention, NoNorm

ACT_INIT_RANGE = (-6.0, 6.0)
SCORE_INIT_RANGE = (-6.0, 60.0)
EMA_DECAY = 0.999


class ActFakeQuant(nn.Module):
    """8-bit asymmetric fake quantization with a moving-average [min, max] (updated in training only)."""

    def __init__(self, init_range=ACT_INIT_RANGE, decay: float = EMA_DECAY):
        super().__init__()
        self.decay = decay
        self.register_buffer("lo", torch.tensor(float(init_range[0])), persistent=False)
        self.register_buffer("hi", torch.tensor(float(init_range[1])), persistent=False)
        self.observe_only = False  # calibration: track ranges without quantizing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.observe_only:
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if self.observe_only:  # calibration keeps the widest range seen
                    self.lo.copy_(torch.minimum(self.lo, lo))
                    self.hi.copy_(torch.maximum(self.hi, hi))
                else:
                    self.lo.mul_(self.decay).add_((1 - self.decay) * lo)
                    self.hi.mul_(self.decay).add_((1 - self.decay) * hi)
            if self.observe_only:
                return x
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)  # 0 must be representable
        scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
        zero = torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x, scale.to(x.dtype).reshape(1), zero.reshape(1), 0, 255)


def weight_fake_quant(w: torch.Tensor) -> torch.Tensor:
    """8-bit symmetric narrow-range fake quantization with the tensor's current max |w| (last value)."""
    scale = torch.clamp(w.detach().abs().max() / 127.0, min=1e-8).reshape(1).to(w.dtype)
    return torch.fake_quantize_per_tensor_affine(w, scale, torch.zeros(1, dtype=torch.int32, device=w.device),
                                                 -127, 127)


class QatLinear(nn.Linear):
    """nn.Linear with fake-quantized input and weight (class swapped in by prepare_qat)."""

    def forward(self, x):
        return F.linear(self.act_fq(x), weight_fake_quant(self.weight), self.bias)


class QatNoNorm(NoNorm):
    """NoNorm with fake-quantized input, gamma, beta and gamma * x (official QAT points)."""

    def forward(self, x):
        gx = self.mul_fq(self.in_fq(x) * weight_fake_quant(self.weight))
        return gx + weight_fake_quant(self.bias)


class QatSelfAttention(MobileBertSelfAttention):
    """Explicit attention (no SDPA) so the scores and the context can be fake-quantized."""

    def forward(self, q_in, k_in, v_in, mask_add, want_maps: bool):
        q, k, v, merge = self.heads(q_in, k_in, v_in, mask_add)
        scores = self.score_fq(torch.matmul(q, k.transpose(-1, -2)) * self.scale)
        if mask_add is not None:
            scores = scores + mask_add.to(scores.dtype)
        probs = torch.softmax(scores, dim=-1)
        ctx = merge(self.ctx_fq(torch.matmul(self.dropout(probs), v)))
        return (ctx, probs, scores) if want_maps else (ctx, None, None)


def check_qat_config(cfg) -> None:
    if cfg.hidden_act != "relu6" or cfg.normalization_type != "no_norm":
        raise ConfigError(f"qat: needs hidden_act='relu6' and normalization_type='no_norm' (the official QAT config, "
                          f"preset 'mobilebert-qat'); this model has hidden_act={cfg.hidden_act!r}, "
                          f"normalization_type={cfg.normalization_type!r}")


def prepare_qat(model: nn.Module) -> nn.Module:
    """Insert fake quantization in place at the official points; returns the same model."""
    check_qat_config(model.config)
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = QatLinear
            module.act_fq = ActFakeQuant()
        elif type(module) is NoNorm:
            module.__class__ = QatNoNorm
            module.in_fq, module.mul_fq = ActFakeQuant(), ActFakeQuant()
        elif type(module) is MobileBertSelfAttention:
            module.__class__ = QatSelfAttention
            module.score_fq, module.ctx_fq = ActFakeQuant(SCORE_INIT_RANGE), ActFakeQuant()
    model.qat = True
    return model


def strip_qat(model: nn.Module) -> nn.Module:
    """Undo prepare_qat in place: plain float modules with the trained weights (for export)."""
    for module in model.modules():
        for cls, base, names in ((QatLinear, nn.Linear, ("act_fq",)), (QatNoNorm, NoNorm, ("in_fq", "mul_fq")),
                                 (QatSelfAttention, MobileBertSelfAttention, ("score_fq", "ctx_fq"))):
            if type(module) is cls:
                for name in names:
                    delattr(module, name)
                module.__class__ = base
    model.qat = False
    return model


@torch.no_grad()
def calibrate_qat(model: nn.Module, batches) -> nn.Module:
    """Set every activation range to the [min, max] seen on `batches` (dicts of model inputs).

    An addition to the official recipe: NoNorm activations of a trained MobileBERT exceed [-6, 6] by far,
    and an EMA of 0.999 needs thousands of steps to widen the initial range; starting from observed
    ranges avoids clipping the first steps of QAT."""
    fqs = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    was_training = model.training
    model.eval()
    for fq in fqs:
        fq.lo.fill_(0.0)
        fq.hi.fill_(0.0)
        fq.observe_only = True
    try:
        for batch in batches:
            model(**batch)
    finally:
        for fq in fqs:
            fq.observe_only = False
        model.train(was_training)
    return model
