"""Export wrappers: every head as a plain function of three int64 tensors returning a fixed tuple.

Paper §5 / official `run_classifier.py --export_dir`: the deployed graph has a fixed signature
(`input_ids, input_mask, segment_ids` -> logits). Exporters (ONNX tracing, torch.export for ExecuTorch)
want exactly that: no `ModelOutput` dataclass, no optional outputs, and no data-dependent Python
branches. `MobileBertModel.forward` skips the attention mask when it is all ones (`bool(mask.all())`),
which torch.export refuses and tracing bakes in; so the wrapper runs the model's own embeddings, encoder
and pooler but always applies the additive mask (an all-ones mask adds zeros: the same numbers), asks for
no attention maps, and hands the result to the head's own `head_outputs`, the method its forward uses.
A siamese classifier (classifier_pooling="siamese") takes the pair row as every classifier does; the graph splits
it into its two sentence rows (`heads.siamese_rows`), runs the encoder on both and applies the head's own
`siamese_logits`. The ONNX graph trims the rows to the longer sentence (`trim_rows`); the ExecuTorch program keeps
them at the input's length.
Parity checks compare the wrapper's exported graph with the *original* model's forward, so a divergence
here cannot hide.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilebert.errors import UserError
from mobilebert.heads import HEADS, flat_choices, siamese_rows
from mobilebert.model import additive_mask

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# The exportable classes, by their own names (HEADS also maps transformers' Bert* names onto them).
HEAD_NAMES = tuple(name for name, cls in HEADS.items() if cls.__name__ == name)


def head_name(model: nn.Module) -> str:
    name = type(model).__name__
    if name not in HEAD_NAMES:
        raise UserError(f"cannot export a {name}: supported heads are {', '.join(HEAD_NAMES)}")
    return name


def output_names(model: nn.Module) -> tuple[str, ...]:
    """The graph's outputs: the head's `output_names` (ModelOutput fields), in `head_outputs`' order."""
    head_name(model)
    return tuple(model.output_names)


def encode(base: nn.Module, input_ids, attention_mask, token_type_ids, token_major: bool = False):
    """MobileBertModel.forward without the data-dependent mask shortcut; returns (hidden, pooled).

    token_major: run the encoder on (B*S, H) instead of (B, S, H). Same numbers; in ONNX every linear is
    then a 2-D Gemm with its bias (and ReLU) fused (with 3-D inputs each bias is a separate Add): MobileBERT
    fp32 at seq 128 goes 58.7 -> 57.4 ms in ONNX Runtime (benchmarks/onnx_graph_variants.py, docs/benchmarks.md)."""
    h = base.embeddings(input_ids, token_type_ids)  # (B, S, H)
    mask_add = additive_mask(attention_mask, h.dtype)  # (B, 1, 1, S)
    B, S, H = h.shape
    if token_major:
        h = h.reshape(-1, H)  # (B*S, H); attention recovers S from mask_add
    h = base.encoder(h, mask_add)[0].view(B, S, H)
    pooled = base.pooler(h, attention_mask) if base.pooler is not None else None
    return h, pooled


def trim_rows(input_ids, attention_mask, token_type_ids):
    """(R, S) rows whose masks are prefixes -> (R, L), L the longest row's length.

    The columns some row uses are found with nonzero, so L stays read from the data in a traced (ONNX) graph, where
    `int(length)` would bake in the trace's. Extra pads change nothing, so this only saves work: a pair padded to
    S gives sentence rows of about S/2 or less."""
    cols = (attention_mask.sum(0) > 0).nonzero().squeeze(1)  # (L,): 0 .. L-1
    return tuple(t.index_select(1, cols) for t in (input_ids, attention_mask, token_type_ids))


class ExportWrapper(nn.Module):
    """`forward(input_ids, attention_mask, token_type_ids) -> tuple` of the head's outputs (`output_names`).

    trim_rows: a siamese classifier's sentence rows are trimmed to the longer sentence in the graph (`trim_rows`;
    the ONNX export). torch.export (ExecuTorch) keeps them at the input's length: with a data-dependent length,
    even one bounded by torch._check, XNNPACK delegates none of the encoder's linears and int8 does not lower
    (docs/benchmarks.md, bi-encoder section)."""

    def __init__(self, model: nn.Module, token_major: bool = False, trim_rows: bool = False):
        super().__init__()
        self.token_major = token_major  # see `encode`; the ONNX export sets it
        self.trim_rows = trim_rows
        self.model = model.eval()
        self.output_names = output_names(model)

    def forward(self, input_ids, attention_mask, token_type_ids):
        shape = input_ids.shape  # (B, S), or (B, C, S) for multiple choice
        if input_ids.dim() == 3:  # choices run as (B*C, S) rows, as the multiple-choice head does
            input_ids, attention_mask, token_type_ids = map(flat_choices, (input_ids, attention_mask, token_type_ids))
        if getattr(self.model, "siamese", False):  # the pair's rows split into 2B sentence rows of S tokens each
            rows = siamese_rows(input_ids, attention_mask, token_type_ids, trim=False)
            if self.trim_rows:  # (2B, L)
                rows = trim_rows(*rows)
            h, _ = encode(self.model.base_model, *rows, self.token_major)
            return (self.model.siamese_logits(h, rows[1]),)
        h, pooled = encode(self.model.base_model, input_ids, attention_mask, token_type_ids, self.token_major)
        return tuple(self.model.head_outputs(h, pooled, shape))


def reference_outputs(model: nn.Module, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, ...]:
    """The original model's own forward (not the wrapper), as the ground truth for parity checks."""
    with torch.no_grad():
        out = model.eval()(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    return tuple(getattr(out, name) for name in output_names(model))
