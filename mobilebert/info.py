"""Model size and cost: parameter counts and forward FLOPs, beside the paper's Table 1 / Table 4.

FLOPs are counted by `torch.utils.flop_counter` on the meta device (no weights are allocated): 2 x the
multiply-adds of every matmul, linear and attention product of the base model's forward pass at batch 1.
Element-wise work (norms, activations, softmax) is not counted, as is usual for transformer FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from mobilebert.config import MobileBertConfig
from mobilebert.heads import MobileBertForPreTraining

# Paper Table 1 (#Params) and Table 4 (#FLOPs at sequence length 128).
PAPER = {
    "mobilebert": (25.3e6, 5.7e9),
    "mobilebert-no-opt": (25.3e6, 5.7e9),
    "mobilebert-qat": (25.3e6, 5.7e9),
    "mobilebert-tiny": (15.1e6, 3.1e9),
    "bert-base": (109e6, 22.5e9),
    "bert-large": (334e6, None),
    "ibbert-large": (293e6, None),
}


@dataclass
class ModelInfo:
    total: int  # with the pooler and the pre-training heads (MLM + NSP), tied weights counted once
    without_embeddings: int  # base model (encoder + pooler), no embeddings, no heads
    without_heads: int  # base model: embeddings + encoder + pooler
    embeddings: int
    pooler: int
    flops: int  # base-model forward at batch 1
    seq_len: int


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def model_info(cfg: MobileBertConfig, seq_len: int = 128) -> ModelInfo:
    with torch.device("meta"):
        full = MobileBertForPreTraining(cfg)
        base = full.base_model
        ids = torch.zeros(1, seq_len, dtype=torch.long)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            base(ids)
    emb = _count(base.embeddings)
    pooler = _count(base.pooler) if base.pooler is not None else 0
    return ModelInfo(total=_count(full), without_embeddings=_count(base) - emb, without_heads=_count(base),
                     embeddings=emb, pooler=pooler, flops=int(counter.get_total_flops()), seq_len=seq_len)


def explain(name: str | None, cfg: MobileBertConfig, info: ModelInfo) -> list[str]:
    """Lines comparing our counts with the paper's, and where the differences come from."""
    if name not in PAPER:
        return ["(no paper figures for this model)"]
    params, flops = PAPER[name]
    lines = []
    ours = info.without_heads
    lines.append(f"params: ours {ours / 1e6:.2f}M (embeddings + encoder + pooler) vs paper {params / 1e6:.1f}M "
                 f"({(ours - params) / params:+.1%})")
    if cfg.model_type == "bert":
        lines.append("  BERT's published counts include the pooler and exclude the MLM/NSP heads, as ours does.")
    elif abs(ours - params) <= 0.01 * params:
        lines.append("  within 1%: the paper rounds, and may count the pooler or norms differently.")
    else:
        mlm_transform = cfg.hidden_size * cfg.hidden_size + 3 * cfg.hidden_size
        lines.append(f"  the paper does not say what it counts; no standard grouping gives {params / 1e6:.1f}M: "
                     f"+ MLM transform {(ours + mlm_transform) / 1e6:.2f}M, with all pre-training heads "
                     f"{info.total / 1e6:.2f}M (the extra {cfg.hidden_size - cfg.embedding_size}x{cfg.vocab_size} "
                     "MLM matrix dominates).")
    if flops is not None:
        if info.seq_len == 128:
            lines.append(f"FLOPs: ours {info.flops / 1e9:.2f}G vs paper {flops / 1e9:.1f}G "
                         f"({(info.flops - flops) / flops:+.1%}) at seq 128")
        else:
            lines.append(f"FLOPs: paper figure ({flops / 1e9:.1f}G) is for seq 128; run with --seq 128 to compare")
        lines.append("  ours: 2 x multiply-adds of linears and attention products; the paper's convention "
                     "(element-wise ops, embedding lookups) is undocumented, which explains a few percent.")
    return lines


def activation_peaks(model: torch.nn.Module, batch: dict) -> list[tuple[str, float]]:
    """Largest |value| leaving every linear and norm module on `batch`, in execution order.

    Answers "does this checkpoint fit fp16, and where does it stop fitting": anything above 65504
    becomes inf in fp16 (NoNorm never rescales, so trained MobileBERTs grow large activations).
    """
    peaks: list[tuple[str, float]] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or name.endswith("LayerNorm"):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: peaks.append((name, o.detach().abs().max().item()))))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return peaks
