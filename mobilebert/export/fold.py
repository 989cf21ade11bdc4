"""NoNorm folding: a graph rewrite every export can apply before tracing (paper §3.4).

Paper §3.4 (operational optimizations, Table 7) replaces LayerNorm by NoNorm
(`h * gamma + beta`, eq. 1) precisely because an element-wise affine costs almost nothing and, unlike
LayerNorm, can be merged into adjacent matmuls for inference. `fold_nonorm` merges it where the
algebra is exact and nothing else reads the un-normalised value:

- bottleneck.input and bottleneck.attention: `N(W x + b)` -> `(diag(g) W) x + (g*b + beta)`;
- the embedding norm: `N(T e + b + P[pos] + Y[type])` -> every term scaled by `g` (P and Y are tables,
  so they are rescaled in place) and `beta` added to the transformation bias.

- the norms that follow a residual add, `g * (W x + b + r) + beta` -> `g * (W x + (b + beta / g) + r)`:
  beta moves into the linear's bias (where the exported graph adds it for free: Gemm / the int8 matmul's
  bias input), leaving one multiply; `g` itself cannot move, since `g * r` would still be needed. Skipped
  for a norm with a zero gain.

The folded model computes the same function up to float rounding, so every export is still checked
against the *unfolded* PyTorch model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mobilebert.model import NoNorm


@torch.no_grad()
def _fold_into_linear(linear: nn.Linear, norm: NoNorm) -> None:
    g, beta = norm.weight, norm.bias
    linear.weight.mul_(g[:, None])  # rows are outputs: scale each output feature
    bias = linear.bias if linear.bias is not None else torch.zeros_like(g)
    linear.bias = nn.Parameter(bias * g + beta)


class Scale(nn.Module):
    """NoNorm without its shift (`x * weight`): what stays of a residual NoNorm once beta is folded."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, x):
        return x * self.weight


@torch.no_grad()
def _fold_shift_into_bias(owner: nn.Module, linear: nn.Linear) -> int:
    """`owner.LayerNorm(linear(x) + r)` with a NoNorm: move beta into linear's bias; returns 1 if folded."""
    norm = getattr(owner, "LayerNorm", None)
    if not isinstance(norm, NoNorm) or linear.bias is None or bool((norm.weight == 0).any()):
        return 0
    linear.bias.add_(norm.bias / norm.weight)
    owner.LayerNorm = Scale(norm.weight)
    return 1


def fold_nonorm(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, int]:
    """Fold every exactly-foldable NoNorm into its linear map; returns (model, number of norms folded).

    Models with LayerNorm (BERT, `mobilebert-no-opt`, the teacher) are returned unchanged (count 0)."""
    if not inplace:
        model = copy.deepcopy(model)
    base = model.base_model
    if getattr(base.config, "normalization_type", "layer_norm") != "no_norm":
        return model, 0
    folded = 0
    emb = base.embeddings
    if isinstance(emb.LayerNorm, NoNorm) and getattr(emb, "transform", False):
        with torch.no_grad():
            g = emb.LayerNorm.weight
            _fold_into_linear(emb.embedding_transformation, emb.LayerNorm)
            # The linear now carries beta once; the two tables are only scaled.
            emb.position_embeddings.weight.mul_(g)
            emb.token_type_embeddings.weight.mul_(g)
        emb.LayerNorm = nn.Identity()
        folded += 1
    for layer in base.encoder.layer:
        bottleneck = getattr(layer, "bottleneck", None)
        if bottleneck is None:
            continue
        for name in ("input", "attention"):
            part = getattr(bottleneck, name, None)
            if part is not None and isinstance(part.LayerNorm, NoNorm):
                _fold_into_linear(part.dense, part.LayerNorm)
                part.LayerNorm = nn.Identity()
                folded += 1
        # Residual norms: attention output, each stacked FFN, the block's FFN output and output bottleneck.
        folded += _fold_shift_into_bias(layer.attention.output, layer.attention.output.dense)
        for ffn in getattr(layer, "ffn", ()):
            folded += _fold_shift_into_bias(ffn.output, ffn.output.dense)
        folded += _fold_shift_into_bias(layer.output, layer.output.dense)
        folded += _fold_shift_into_bias(layer.output.bottleneck, layer.output.bottleneck.dense)
    return model, folded
