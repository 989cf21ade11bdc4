"""Up-front cost estimate of a training run: tokens, FLOPs and a rough wall-clock time per stage.

FLOPs count the matrix multiplies (2 per multiply-add): per token and layer, the layer's weight matrices
plus the attention products (2 x S x intra for scores and context); the MLM head only at masked
positions. Training is 3x a forward (forward + backward). Knowledge-transfer and PD stages add one
teacher forward; PKT stage l runs both models l layers deep. Time = FLOPs / (a measured matmul rate x
a utilisation factor), so it is a rough guide (the quickstart's summary prints it beside the real time).
"""

from __future__ import annotations

import time

import torch

from mobilebert.config import MobileBertConfig

UTILISATION = {"cpu": 0.35, "cuda": 0.35}
H100_BF16 = 989e12  # dense bf16 FLOP/s of one H100 SXM (vendor figure), for the scale line


def _layer_macs(cfg: MobileBertConfig, seq_len: int) -> float:
    """Multiply-adds per token of one transformer layer (weights + attention products)."""
    H, I, F = cfg.hidden_size, cfg.true_hidden_size, cfg.num_feedforward_networks
    qk_in = I if (cfg.use_bottleneck_attention or cfg.key_query_shared_bottleneck) else H
    v_in = I if cfg.use_bottleneck_attention else H
    macs = 2 * qk_in * I + v_in * I + I * I            # Q, K, V, attention output
    macs += F * 2 * I * cfg.intermediate_size          # F stacked FFNs
    if cfg.use_bottleneck:
        macs += H * I * (2 if cfg.key_query_shared_bottleneck else 1) + I * H  # bottlenecks in/out
    return macs + 2 * seq_len * I                      # scores and context


def forward_flops_per_token(cfg: MobileBertConfig, seq_len: int, layers: int | None = None,
                            mlm_fraction: float = 0.0) -> float:
    layers = cfg.num_hidden_layers if layers is None else layers
    emb = 3 * cfg.embedding_size * cfg.hidden_size if cfg.trigram_input else 0
    head = mlm_fraction * (cfg.hidden_size ** 2 + cfg.hidden_size * cfg.vocab_size)
    return 2.0 * (emb + layers * _layer_macs(cfg, seq_len) + head)


def measure_matmul_flops(device: torch.device, seconds: float = 0.3) -> float:
    """Achieved FLOP/s of a 512x512 fp32 matmul on `device` (the machine's own yardstick)."""
    n = 512
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(4):
            a @ b
        reps += 4
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def estimate(stages, teacher: MobileBertConfig | None, student: MobileBertConfig, seq_len: int,
             mlm_fraction: float, flops_per_s: float, world_size: int = 1, device_type: str = "cpu") -> list[dict]:
    """One row per stage: steps, tokens, PFLOPs and estimated hours on this machine x world_size."""
    rows = []
    rate = flops_per_s * UTILISATION.get(device_type, 0.35) * world_size
    for st in stages:
        tokens = st.train.steps * st.train.batch_size * seq_len
        if st.kind == "teacher":
            per_tok = 3 * forward_flops_per_token(teacher, seq_len, mlm_fraction=mlm_fraction)
        else:
            depth = st.layer if st.kind in ("pkt", "emb") else None
            heads = mlm_fraction if st.kind in ("pd", "akt", "bare") else 0.0
            per_tok = 3 * forward_flops_per_token(student, seq_len, depth, heads)
            if st.kind != "bare" and teacher is not None:
                t_depth = getattr(st, "teacher_layer", None)  # the layer map's m_l (different depths)
                per_tok += forward_flops_per_token(teacher, seq_len, depth if t_depth is None else t_depth, heads)
        flops = per_tok * tokens
        rows.append({"stage": st.name, "steps": st.train.steps, "tokens": tokens, "pflops": flops / 1e15,
                     "hours": flops / rate / 3600})
    return rows


def format_estimate(rows: list[dict], flops_per_s: float, device: str) -> str:
    lines = [f"cost estimate (matmul rate {flops_per_s / 1e9:.0f} GFLOP/s on {device}, "
             f"{int(UTILISATION.get(device.split(':')[0], 0.35) * 100)}% utilisation assumed):",
             f"  {'stage':<10} {'steps':>9} {'tokens':>10} {'PFLOP':>10} {'time':>10}"]

    def fmt_time(h: float) -> str:
        if h >= 24 * 730:
            return f"{h / 24 / 365:,.0f} years"
        return f"{h * 60:.1f} min" if h < 1 else (f"{h:.1f} h" if h < 48 else f"{h / 24:,.1f} days")

    compact = rows if len(rows) <= 8 else rows[:3] + [None] + rows[-3:]
    for r in compact:
        if r is None:
            lines.append(f"  {'...':<10}")
            continue
        lines.append(f"  {r['stage']:<10} {r['steps']:>9,} {r['tokens']:>10.3g} {r['pflops']:>10.3g} "
                     f"{fmt_time(r['hours']):>10}")
    total = sum(r["hours"] for r in rows)
    ref_hours = sum(r["pflops"] for r in rows) * 1e15 / (8 * H100_BF16 * UTILISATION["cuda"]) / 3600
    lines.append(f"  {'total':<10} {sum(r['steps'] for r in rows):>9,} {sum(r['tokens'] for r in rows):>10.3g} "
                 f"{sum(r['pflops'] for r in rows):>10.3g} {fmt_time(total):>10}")
    lines.append(f"  for scale: 8 x H100 (989 TFLOP/s dense bf16 each) at the same utilisation: {fmt_time(ref_hours)}")
    return "\n".join(lines)
