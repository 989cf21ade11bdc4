"""Inference-only encoder layers for export: linears that read one tensor merged, NoNorms carried, not applied.

Paper §3.4 (Table 7) replaces LayerNorm by NoNorm, `N(h) = g * h + beta` (eq. 1), because an element-wise
affine costs almost nothing and can be merged into matmuls. `mobilebert.export.fold.fold_nonorm` merges
the norms that only a linear reads (bottlenecks, embeddings). The norms after a residual add cannot be
folded one by one, since the residual path reads the normalised value too. But all of them can be carried
through the layer stack: keep every residual stream as `true = s * u + c`, where `u` is the tensor the graph
holds and `s`, `c` are per-channel constants known at export time. Then

- a linear reading the stream: `W (s*u + c) + b = (W diag(s)) u + (W c + b)`: new weights, same cost;
- a residual NoNorm: `g * (W r + b + s*u + c) + beta = (g*s) * u' + (g*(b + c) + beta)` with
  `u' = (W / s) r + u`, which is a single Gemm whose C input is the residual (`torch.addmm`): the bias
  add, the residual add and the norm's multiply all disappear from the graph.

The stream is turned back into true values once, after the last layer (one multiply-add). Separately, the
linears that read the same tensor run as one wider Gemm: per MobileBERT layer, bottleneck input, attention
bottleneck and value read the 512-d block input (512 -> 3 x 128), and query and key read the shared
bottleneck (128 -> 2 x 128); in BERT, query, key and value read the layer input. Layers with LayerNorm
(BERT, the IB-BERT teacher, `mobilebert-no-opt`) get only the merging; their norms run as trained.

`fuse_for_inference` returns a copy whose encoder layers are `FusedLayer`s: the same function up to float
rounding (the export's parity check compares against the original model), on 2-D token-major input (B*S, H)
as the ONNX export runs it, or (B, S, H) as the ExecuTorch export does (`residual_gemm=False` there: linear +
add, which XNNPACK quantizes). Inference only: no dropout, no attention maps.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mobilebert.model import NoNorm
from mobilebert.export.fold import Scale, fold_nonorm

# Carried scales outside this range are applied to the stream before the next layer (f32 headroom).
SCALE_RANGE = (1e-8, 1e8)


def _affine(norm: nn.Module):
    """(g, beta) of a NoNorm-like module (None, None for Identity); None for a real normalisation."""
    if isinstance(norm, NoNorm):
        return norm.weight.double(), norm.bias.double()
    if isinstance(norm, Scale):
        return norm.weight.double(), torch.zeros_like(norm.weight, dtype=torch.float64)
    if isinstance(norm, nn.Identity):
        return None, None
    return None


def _read(linear: nn.Linear, s, c):
    """(W, b) in float64 of `linear` applied to a stream `s*u + c` (s, c None: true values)."""
    w = linear.weight.double()
    b = linear.bias.double() if linear.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if c is not None:
        b = b + w @ c
    if s is not None:
        w = w * s[None, :]
    return w, b


class MergedLinear(nn.Module):
    """Several linears on one input as one Gemm; returns each part (a LayerNorm applied where one is given)."""

    def __init__(self, parts: list[tuple[torch.Tensor, torch.Tensor]], norms: list[nn.Module | None]):
        super().__init__()
        self.sizes = [w.shape[0] for w, _ in parts]
        self.weight = nn.Parameter(torch.cat([w for w, _ in parts]).float(), requires_grad=False)
        self.bias = nn.Parameter(torch.cat([b for _, b in parts]).float(), requires_grad=False)
        self.norms = nn.ModuleList(n if n is not None else nn.Identity() for n in norms)

    def forward(self, x):
        outs = F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)
        return [norm(o) for norm, o in zip(self.norms, outs)]


class ResidualLinear(nn.Module):
    """`N(W r + b + residual)`. Carried NoNorm: one `addmm(u, r, W_t)`; LayerNorm: run as trained."""

    def __init__(self, w, b, norm: nn.Module | None):
        super().__init__()
        self.norm = norm  # None: carried (w already divided by the residual's scale, b moved into c)
        self.gemm_c = True  # ONNX: one Gemm; False (ExecuTorch): linear + add, which XNNPACK quantizes
        self.weight = nn.Parameter(w.float(), requires_grad=False)  # (out, in)
        self.bias = nn.Parameter(b.float(), requires_grad=False) if norm is not None else None

    def forward(self, r, u):
        if self.norm is not None:
            return self.norm(F.linear(r, self.weight, self.bias) + u)
        if self.gemm_c:
            return torch.addmm(u, r, self.weight.t())  # (T, out): Gemm with the residual as C
        return F.linear(r, self.weight) + u


class _Stream:
    """The carried affine of a residual stream: true = s * u + c (None: identity). carry=False: norms run."""

    def __init__(self, s=None, c=None, carry: bool = True):
        self.s, self.c, self.carry = s, c, carry

    def residual(self, linear_wb, norm: nn.Module) -> ResidualLinear:
        """The ResidualLinear for `norm(W r + b + stream)`, updating the stream to its output's affine."""
        w, b = linear_wb
        gb = _affine(norm)
        if gb is None or not self.carry:  # the stream holds true values (see fuse_for_inference)
            return ResidualLinear(w, b, copy.deepcopy(norm))
        g, beta = gb
        s = self.s if self.s is not None else torch.ones(w.shape[0], dtype=torch.float64)
        c = self.c if self.c is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        g = g if g is not None else torch.ones_like(s)
        beta = beta if beta is not None else torch.zeros_like(s)
        layer = ResidualLinear(w / s[:, None], None, None)
        self.s, self.c = g * s, g * (b + c) + beta
        return layer


def _carriable(layer) -> bool:
    """Every residual norm NoNorm-like with non-zero gains (a zero gain cannot be divided out)."""
    norms = [layer.attention.output.LayerNorm, layer.output.LayerNorm]
    norms += [f.output.LayerNorm for f in getattr(layer, "ffn", ())]
    if layer.use_bottleneck:
        norms.append(layer.output.bottleneck.LayerNorm)
    for n in norms:
        gb = _affine(n)
        if gb is None or (gb[0] is not None and bool((gb[0] == 0).any())):
            return False
    return True


class FusedLayer(nn.Module):
    """One encoder layer (model.MobileBertLayer's dataflow) for inference on (T, hidden) token-major input.

    Between layers the tensor is the carried `u`, not the layer's true output (only the last layer's output,
    or one where the affine is applied, is): hidden states read from a fused model mean nothing."""

    def __init__(self, layer, stream: _Stream, last: bool):
        super().__init__()
        attn = layer.attention.self
        self.num_heads, self.head_size, self.scale = attn.num_heads, attn.head_size, attn.scale
        s, c = stream.s, stream.c
        # Parts of the first Gemm (reading x) and of the second (reading the bottleneck that q/k/v read).
        first, first_norms, second = [], [], []
        self.use_bottleneck = layer.use_bottleneck
        if layer.use_bottleneck:
            for name in ("input", "attention") if layer.key_query_shared_bottleneck else ("input",):
                part = getattr(layer.bottleneck, name)
                gb = _affine(part.LayerNorm)
                w, b = _read(part.dense, s, c)
                if gb is not None and gb[0] is not None:
                    w, b = w * gb[0][:, None], b * gb[0] + gb[1]
                first.append((w, b))
                first_norms.append(None if gb is not None else copy.deepcopy(part.LayerNorm))
            qk_mid = layer.use_bottleneck_attention or layer.key_query_shared_bottleneck
            v_mid = layer.use_bottleneck_attention
        else:
            qk_mid = v_mid = False
        self.n_bottleneck = len(first)  # the first Gemm's bottleneck parts come before its q/k/v ones
        for lin, from_mid in ((attn.query, qk_mid), (attn.key, qk_mid), (attn.value, v_mid)):
            if from_mid:
                second.append(_read(lin, None, None))
            else:
                first.append(_read(lin, s, c))
                first_norms.append(None)
        self.first = MergedLinear(first, first_norms)
        self.second = MergedLinear(second, [None] * len(second)) if second else None
        self.mid_index = 1 if layer.use_bottleneck and layer.key_query_shared_bottleneck else 0
        # Residual chain inside the block (intra width): starts at the bottleneck input (true values).
        a = _Stream(carry=stream.carry) if layer.use_bottleneck else _Stream(stream.s, stream.c, stream.carry)
        self.attn_out = a.residual(_read(layer.attention.output.dense, None, None), layer.attention.output.LayerNorm)
        self.ffn_in, self.ffn_out = nn.ModuleList(), nn.ModuleList()
        blocks = [(f.intermediate, f.output.dense, f.output.LayerNorm) for f in getattr(layer, "ffn", ())]
        blocks.append((layer.intermediate, layer.output.dense, layer.output.LayerNorm))
        for inter, out_dense, norm in blocks:
            w, b = _read(inter.dense, a.s, a.c)
            self.ffn_in.append(nn.Linear(w.shape[1], w.shape[0]))
            with torch.no_grad():
                self.ffn_in[-1].weight.copy_(w.float())
                self.ffn_in[-1].bias.copy_(b.float())
            self.ffn_out.append(a.residual(_read(out_dense, None, None), norm))
        self.act = layer.intermediate.act
        if layer.use_bottleneck:  # intra -> hidden, residual: the block input stream
            ob = layer.output.bottleneck
            self.out_bottleneck = stream.residual(_read(ob.dense, a.s, a.c), ob.LayerNorm)
        else:
            stream.s, stream.c = a.s, a.c
        # Apply the carried affine here if this is the last layer or the scale drifts out of f32 headroom.
        s = stream.s
        self.apply_affine = s is not None and (last or bool((s.abs() < SCALE_RANGE[0]).any())
                                               or bool((s.abs() > SCALE_RANGE[1]).any()))
        if self.apply_affine:
            self.register_buffer("out_scale", s.float())
            self.register_buffer("out_shift", stream.c.float())
            stream.s = stream.c = None

    def forward(self, x, mask_add, want_maps: bool = False):
        # x: (T, hidden) with T = B*S, or (B, S, hidden) as MobileBertModel.forward passes it; mask_add:
        # (B, 1, 1, S) gives S (None: no padding, as MobileBertModel passes an all-ones mask).
        if x.dim() == 3:
            B, S, H = x.shape
            mask_add = torch.zeros(B, 1, 1, S, dtype=x.dtype) if mask_add is None else mask_add
            # B and S passed on: reshapes by -1 under torch.export's symbolic shapes cost minutes of sympy.
            return self._run(x.reshape(B * S, H), mask_add, B, S).view(B, S, -1), None, None
        return self._run(x, mask_add, -1, mask_add.shape[-1]), None, None

    def _run(self, x, mask_add, B, S):
        parts = self.first(x)
        li = parts[0] if self.use_bottleneck else x
        qkv = parts[self.n_bottleneck:]
        if self.second is not None:
            qkv = self.second(parts[self.mid_index]) + qkv
        q, k, v = (t.reshape(B, S, self.num_heads, self.head_size).transpose(1, 2) for t in qkv)
        # Written out rather than F.scaled_dot_product_attention: the same ONNX graph (the exporter decomposes
        # it anyway), and ExecuTorch's lowering of SDPA fails on the head merge under symbolic shapes.
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale + mask_add, dim=-1)
        ctx = torch.matmul(probs, v)  # (B, heads, S, d)
        ctx = ctx.permute(0, 2, 1, 3).reshape(x.shape[0], self.num_heads * self.head_size)  # (T, intra)
        a = self.attn_out(ctx, li)
        for inter, out in zip(self.ffn_in, self.ffn_out):
            a = out(self.act(inter(a)), a)
        y = self.out_bottleneck(a, x) if self.use_bottleneck else a
        if self.apply_affine:
            y = y * self.out_scale + self.out_shift
        return y


def fuse_for_inference(model: nn.Module, residual_gemm: bool = True) -> nn.Module:
    """A copy of `model` (any head) with NoNorms folded and every encoder layer a `FusedLayer`.

    residual_gemm: carried residual steps as `addmm` (ONNX: one Gemm with the residual as C); False writes
    them as linear + add, the form ExecuTorch's XNNPACK quantizer and delegate take."""
    model, _ = fold_nonorm(model)
    base = model.base_model
    layers = list(base.encoder.layer)
    # LayerNorm models (or a NoNorm with a zero gain): nothing carried, every norm runs as trained.
    stream = _Stream(carry=all(_carriable(layer) for layer in layers))
    fused = [FusedLayer(layer, stream, last=i == len(layers) - 1) for i, layer in enumerate(layers)]
    base.encoder.layer = nn.ModuleList(fused)
    for m in base.encoder.modules():
        if isinstance(m, ResidualLinear):
            m.gemm_c = residual_gemm
    return model.eval()
