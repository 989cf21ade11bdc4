"""Model size and cost: parameter counts and forward FLOPs, beside the paper's Table 1 / Table 4.

FLOPs are counted by `torch.utils.flop_counter` on the meta device (no weights are allocated): 2 x the
multiply-adds of every matmul, linear and attention product of the base model's forward pass at batch 1.
Element-wise work (norms, activations, softmax) is not counted, as is usual for transformer FLOPs.
`describe` is the `mobilebert info` job: these counts printed beside the paper's, and optionally a checkpoint's
largest activations against fp16's range.
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


def describe(model: str, seq: int = 128, activations: str | None = None) -> int:
    """The `mobilebert info` job: print a preset's or checkpoint's counts beside the paper; exit status 0.

    activations: a text to run through a checkpoint (with its vocabulary), reporting each module's largest
    activation against fp16's range."""
    from pathlib import Path

    from mobilebert.checkpoint import load_config
    from mobilebert.errors import ConfigError
    from mobilebert.presets import PRESETS, get_config

    if model in PRESETS:
        name, cfg = model, get_config(model)
    elif Path(model).exists():
        name, cfg = None, load_config(model)
    else:
        raise ConfigError(f"{model!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    if seq < 1 or seq > cfg.max_position_embeddings:
        raise ConfigError(f"--seq {seq}: must be between 1 and max_position_embeddings={cfg.max_position_embeddings}")
    info = model_info(cfg, seq)
    print(f"{model}: {cfg.num_hidden_layers} layers, inter-block {cfg.hidden_size}, intra {cfg.true_hidden_size}, "
          f"{cfg.num_attention_heads} heads, {cfg.num_feedforward_networks} FFN(s) of {cfg.intermediate_size}, "
          f"{cfg.normalization_type}, {cfg.hidden_act}")
    print(f"  parameters, total (with pre-training heads): {info.total:>13,}")
    print(f"  parameters, without heads:                   {info.without_heads:>13,}")
    print(f"  parameters, without embeddings (or heads):   {info.without_embeddings:>13,}")
    print(f"  forward FLOPs at batch 1, seq {seq}:          {info.flops / 1e9:>10.2f} G")
    for line in explain(name, cfg, info):
        print("  " + line)
    if activations:
        _report_activations(model, cfg, activations)
    return 0


def _report_activations(model: str, cfg: MobileBertConfig, text: str) -> None:
    from mobilebert.errors import UserError
    from mobilebert.heads import load_model
    from mobilebert.model import FP16_MAX
    from mobilebert.presets import PRESETS
    from mobilebert.tokenizer import Tokenizer

    if model in PRESETS:
        raise UserError("--activations needs a checkpoint folder (random preset weights say nothing about fp16)")
    tok = Tokenizer.from_file(model)
    net = load_model(model).eval()
    peaks = activation_peaks(net, tok(text, max_length=cfg.max_position_embeddings))
    over = [(n, p) for n, p in peaks if not p <= FP16_MAX]
    top = max(peaks, key=lambda np_: np_[1])
    print(f"  largest activation: {top[1]:.4g} at {top[0]}")
    if over:
        print(f"  fp16 overflows first at {over[0][0]} ({over[0][1]:.4g} > {FP16_MAX:.0f}); "
              f"{len(over)} of {len(peaks)} modules exceed fp16: use bf16 or fp32")
    else:
        print(f"  fits fp16 on this input (headroom {FP16_MAX / top[1]:.1f}x)")
