"""Export wrappers: every head as a plain function of three int64 tensors returning a fixed tuple.

Paper §5 / official `run_classifier.py --export_dir`: the deployed graph has a fixed signature
(`input_ids, input_mask, segment_ids` -> logits). Exporters (ONNX tracing, torch.export for ExecuTorch)
want exactly that: no `ModelOutput` dataclass, no optional outputs, and no data-dependent Python
branches. `MobileBertModel.forward` skips the attention mask when it is all ones (`bool(mask.all())`),
which torch.export refuses and tracing bakes in; so the wrapper runs the same modules but always
applies the additive mask (an all-ones mask adds zeros: the same numbers). Parity checks compare the
wrapper's exported graph with the *original* model's forward, so a divergence here cannot hide.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilebert.errors import UserError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# Output names per head class, in the order the wrapper returns them (and the ModelOutput field each is).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "MobileBertModel": ("last_hidden_state", "pooler_output"),
    "MobileBertForPreTraining": ("prediction_logits", "seq_relationship_logits"),
    "MobileBertForMaskedLM": ("logits",),
    "MobileBertForNextSentencePrediction": ("logits",),
    "MobileBertForSequenceClassification": ("logits",),
    "MobileBertForQuestionAnswering": ("start_logits", "end_logits"),
    "MobileBertForTokenClassification": ("logits",),
    "MobileBertForMultipleChoice": ("logits",),
}


def head_name(model: nn.Module) -> str:
    name = type(model).__name__
    if name not in OUTPUTS:
        raise UserError(f"cannot export a {name}: supported heads are {', '.join(OUTPUTS)}")
    return name


def output_names(model: nn.Module) -> tuple[str, ...]:
    names = OUTPUTS[head_name(model)]
    if head_name(model) == "MobileBertModel" and model.pooler is None:
        names = names[:1]
    return names


def encode(base: nn.Module, input_ids, attention_mask, token_type_ids, token_major: bool = False):
    """MobileBertModel.forward without the data-dependent mask shortcut; returns (hidden, pooled).

    token_major: run the encoder on (B*S, H) instead of (B, S, H). Same numbers; in ONNX every linear is
    then a 2-D Gemm with its bias (and ReLU) fused (with 3-D inputs each bias is a separate Add): MobileBERT
    fp32 at seq 128 goes 58.7 -> 57.4 ms in ONNX Runtime (benchmarks/onnx_graph_variants.py, docs/benchmarks.md)."""
    h = base.embeddings(input_ids, token_type_ids)  # (B, S, H)
    # Same additive key mask as the model: 0 where attended, the dtype's minimum where padded.
    mask_add = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
    B, S, H = h.shape
    if token_major:
        h = h.reshape(-1, H)  # (B*S, H); attention recovers S from mask_add
    for layer in base.encoder.layer:
        h = layer(h, mask_add, False)[0]
    h = h.view(B, S, H)
    pooled = base.pooler(h) if base.pooler is not None else None
    return h, pooled


class ExportWrapper(nn.Module):
    """`forward(input_ids, attention_mask, token_type_ids) -> tuple` of the head's outputs (`output_names`)."""

    def __init__(self, model: nn.Module, token_major: bool = False):
        super().__init__()
        self.token_major = token_major  # see `encode`; the ONNX export sets it
        self.kind = head_name(model)
        self.model = model.eval()
        self.output_names = output_names(model)

    def forward(self, input_ids, attention_mask, token_type_ids):
        m, kind = self.model, self.kind
        if kind == "MobileBertForMultipleChoice":
            # (B, C, S) -> (B*C, S), as the model does.
            num_choices = input_ids.shape[1]
            flat = lambda t: t.reshape(-1, t.shape[-1])
            input_ids, attention_mask, token_type_ids = flat(input_ids), flat(attention_mask), flat(token_type_ids)
        base = m if kind == "MobileBertModel" else m.base_model
        h, pooled = encode(base, input_ids, attention_mask, token_type_ids, self.token_major)
        if kind == "MobileBertModel":
            return (h,) if pooled is None else (h, pooled)
        if kind == "MobileBertForPreTraining":
            return m.cls.predictions(h), m.cls.seq_relationship(pooled)
        if kind == "MobileBertForMaskedLM":
            return (m.cls.predictions(h),)
        if kind == "MobileBertForNextSentencePrediction":
            return (m.cls.seq_relationship(pooled),)
        if kind == "MobileBertForSequenceClassification":
            return (m.classifier(pooled),)
        if kind == "MobileBertForQuestionAnswering":
            start, end = m.qa_outputs(h).split(1, dim=-1)
            return start.squeeze(-1), end.squeeze(-1)
        if kind == "MobileBertForTokenClassification":
            return (m.classifier(h),)
        return (m.classifier(pooled).view(-1, num_choices),)  # multiple choice


def reference_outputs(model: nn.Module, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, ...]:
    """The original model's own forward (not the wrapper), as the ground truth for parity checks."""
    with torch.no_grad():
        out = model.eval()(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    return tuple(getattr(out, name) for name in output_names(model))
