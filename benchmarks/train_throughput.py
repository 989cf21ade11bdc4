"""Training throughput (tokens/s) of each kind of pipeline step on this machine.

Measures one optimizer step (forward, backward, LAMB) of: teacher pre-training (MLM + NSP), PKT stage l at
several depths l (teacher and student run only l layers deep), the same stage run the official way (both
models at full depth, loss gated to layer l), JKT (all layers), and PD. Batches are synthetic (random
word pieces, 15% masked, no padding), so the numbers measure compute, not the data pipeline.

    python benchmarks/train_throughput.py                      # the quickstart's models (configs/quickstart-ibbert.yaml)
    python benchmarks/train_throughput.py --full --batch 4     # IB-BERT_LARGE teacher, MobileBERT student (slow)
    python benchmarks/train_throughput.py --json out.json      # also write the rows as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from mobilebert import get_config
from mobilebert.distill import steps as S
from mobilebert.distill import transfer as T
from mobilebert.recipes.train_settings import KtSettings
from mobilebert.engine.optim import build_optimizer
from mobilebert.heads import MobileBertForPreTraining

REPO = Path(__file__).resolve().parents[1]


def synthetic_batch(batch: int, seq: int, vocab: int, max_predictions: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    labels = torch.full((batch, seq), -100)
    n = min(max_predictions, max(1, round(0.15 * seq)))
    pos = torch.stack([torch.randperm(seq - 2, generator=g)[:n] + 1 for _ in range(batch)])
    labels.scatter_(1, pos, ids.gather(1, pos))
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
            "labels": labels, "next_sentence_label": torch.randint(0, 2, (batch,), generator=g)}


CLOCK = time.perf_counter  # --clock cpu: process CPU time, robust to other jobs on a shared machine (use --threads 1)


def time_steps(model, loss_fn, batch: dict, scale, steps: int, warmup: int) -> list[float]:
    T.apply_plan(model, scale)
    opt = build_optimizer(model, "lamb", 1e-3, lr_scale=scale)
    fwd = S.Forward(model)
    totals = loss_fn.denominators(batch)
    times = []
    for i in range(warmup + steps):
        t0 = CLOCK()
        loss, _ = loss_fn(fwd, batch, totals)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(CLOCK() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart-ibbert.yaml"))
    ap.add_argument("--full", action="store_true", help="ibbert-large teacher and mobilebert student (24 layers)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--depths", default="", help="PKT depths to measure, e.g. 1,6,12,24 (default: 1, L/4, L/2, L)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (with --threads 1, robust to other jobs)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.full:
        t_cfg, s_cfg = get_config("ibbert-large"), get_config("mobilebert")
    else:
        cfg = yaml.safe_load(Path(args.config).read_text())
        t_cfg = get_config(cfg["teacher"]["preset"], **cfg["teacher"].get("overrides", {}))
        s_cfg = get_config(cfg["student"]["preset"], **cfg["student"].get("overrides", {}))
    L = s_cfg.num_hidden_layers
    depths = [int(d) for d in args.depths.split(",")] if args.depths else sorted({1, max(1, L // 4), max(1, L // 2), L})
    torch.manual_seed(0)
    teacher, student = MobileBertForPreTraining(t_cfg), MobileBertForPreTraining(s_cfg).eval()
    batch = synthetic_batch(args.batch, args.seq, s_cfg.vocab_size, 20)
    tokens = args.batch * args.seq
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []

    def record(name: str, depth, times):
        ms = statistics.median(times) * 1000
        rows.append({"step": name, "depth": depth, "ms_per_step": round(ms, 1),
                     "tokens_per_s": round(tokens / ms * 1000)})
        print(f"  {name:<22} {str(depth):>6} {ms:>10.0f} {tokens / ms * 1000:>10.0f}", flush=True)

    print(f"batch {args.batch} x seq {args.seq} = {tokens} tokens/step; teacher {t_cfg.num_hidden_layers} layers "
          f"({sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M), student {L} layers "
          f"({sum(p.numel() for p in student.parameters()) / 1e6:.1f}M); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock, {platform.processor() or platform.machine()}")
    print(f"  {'step':<22} {'depth':>6} {'ms/step':>10} {'tokens/s':>10}")
    record("teacher MLM+NSP", t_cfg.num_hidden_layers,
           time_steps(teacher.train(), S.MlmNspLoss(), batch, lambda n: 1.0, args.steps, args.warmup))
    T.freeze(teacher.eval())
    kt = KtSettings()
    for l in depths:
        loss = S.TransferLoss(teacher, kt, [l], L, depth=l)
        record("PKT stage (truncated)", l, time_steps(student, loss, batch, T.stage_plan("pkt", L, l),
                                                        args.steps, args.warmup))
    gated = S.TransferLoss(teacher, kt, [depths[0]], L, depth=None)  # GR: full depth, loss gated to one layer
    record("PKT stage (GR gated)", f"{depths[0]}/{L}",
           time_steps(student, gated, batch, T.stage_plan("pkt", L, depths[0]), args.steps, args.warmup))
    record("JKT (all layers)", L, time_steps(student, S.TransferLoss(teacher, kt, list(range(1, L + 1)), L), batch,
                                             T.stage_plan("jkt", L), args.steps, args.warmup))
    record("PD", L, time_steps(student, S.DistillationLoss(teacher, 0.5), batch, lambda n: 1.0,
                               args.steps, args.warmup))
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average (1 min) before/after: {load0:.2f}/{load1:.2f} on {os.cpu_count()} cores")
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "clock": args.clock, "machine": platform.platform(), "batch": args.batch, "seq": args.seq,
                "full": args.full,
                "load_before": load0, "load_after": load1}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
