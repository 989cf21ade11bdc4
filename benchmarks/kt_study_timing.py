"""`python benchmarks/kt_study.py --time`: the step timings the knowledge-transfer study's budget comes from.

Times, on this machine's CPU threads, a few optimizer steps of each kind of stage the study runs, for the
MiniLM-shaped student (what `student.preset=from-teacher` builds from all-MiniLM-L6-v2, made here by hand from the
`mobilebert` preset: inter-block 384, intra-block 96, 12 heads, intermediate 384, 6 layers) with the real
all-MiniLM-L6-v2 teacher, batch 32 x 128 tokens, LAMB; and fine-tuning steps (AdamW, batch 32) of the student and
the teacher at sequence lengths 64 and 128 (GLUE batches are padded to their longest example). Prints ms per step
(wall and process CPU), the ATen operators one step dispatches (each a kernel launch on a GPU, where this small
model's steps are bound by launches, not FLOPs) and the load average, so that the numbers can be read against the
machine's load.

How the study's budget was chosen: `--time` on 2026-12-02 14:25-14:40 UTC (2 threads, torch 2.13 CPU), with the
2 cores shared by other jobs (load average 6-10), so ms per step wall / CPU:

    pre-training, batch 32 x 128, LAMB      bare 58,966 / 12,085    PKT stage 6 56,552 / 14,061
                                            JKT 69,638 / 16,860     AKT 60,670 / 18,524
                                            final stage (MLM + NSP + last-layer FMT) 14,994 / 11,698
    fine-tuning, batch 32, AdamW            student seq 64: 4,164 / 2,849     seq 128: 23,955 / 9,692
                                            teacher seq 64: 12,054 / 6,383    seq 128: 24,986 / 8,738

Under that load the wall times say little and the CPU times are inflated by spinning threads. They were scaled
by one measurement of the same machine when quiet: the teacher's fine-tuning step at batch 32 x <= 64 took 0.66 s
(docs/benchmarks.md, all-MiniLM-L6-v2 on SST-2) against 6.38 s CPU here, a factor 9.7. Scaled so: bare 1.25 s,
PKT <= 1.45 s, JKT 1.74 s, AKT 1.91 s, the final stage 1.21 s per step; fine-tuning ~0.3 s (student) and
~0.66-0.9 s (teacher) per step. This is a rough estimate: rerun `--time` on a quiet machine before the study and
change kt_study.REAL (the results file records the budget and refuses to mix two).
"""

from __future__ import annotations

import os
import time

import torch


def student_config():
    from mobilebert.presets import get_config

    return get_config("mobilebert", hidden_size=384, num_attention_heads=12, intra_bottleneck_size=96,
                      intermediate_size=384, num_hidden_layers=6)


def _batch(B: int, S: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    labels = torch.full((B, S), -100)
    labels[:, 1:S:7] = torch.randint(1000, vocab, (B, len(range(1, S, 7))), generator=g)  # ~15% masked
    return {"input_ids": torch.randint(1000, vocab, (B, S), generator=g), "attention_mask": torch.ones(B, S, dtype=torch.long),
            "token_type_ids": torch.zeros(B, S, dtype=torch.long), "labels": labels,
            "next_sentence_label": torch.randint(0, 2, (B,), generator=g)}


def _time(step, n: int) -> tuple[float, float, int]:
    """ms per step wall and CPU, and the ATen operators one step dispatches (counted in the warm-up step): on a GPU
    each is a kernel launch, so the count, not the FLOPs, sets how fast this small model's steps can go there."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    with Count():
        step()  # warm-up
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return (time.perf_counter() - w) / n * 1e3, (time.process_time() - c) / n * 1e3, Count.ops


def time_steps(n: int = 3, B: int = 32, S: int = 128) -> dict:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kt_study import minilm_dir

    from mobilebert.checkpoint import load_pretrained
    from mobilebert.distill import steps as St
    from mobilebert.recipes.train_settings import KtSettings
    from mobilebert.distill.transfer import freeze
    from mobilebert.engine.optim import build_optimizer
    from mobilebert.heads import MobileBertForPreTraining, MobileBertForSequenceClassification

    teacher = freeze(load_pretrained(MobileBertForPreTraining, minilm_dir()).eval())
    student = MobileBertForPreTraining(student_config())
    L = student.config.num_hidden_layers
    batch = _batch(B, S, student.config.vocab_size)
    kt = KtSettings()
    no_logits_pd = St.DistillationLoss(None, 1.0)  # the final stage when the teacher has no MLM head: MLM + NSP ...
    last_fmt = St.TransferLoss(teacher, kt, [L], L)  # ... + last-layer feature-map transfer
    losses = {
        "bare (MLM + NSP)": St.MlmNspLoss(),
        f"PKT stage {L} (deepest)": St.TransferLoss(teacher, kt, [L], L, depth=L),
        "JKT (all layers)": St.TransferLoss(teacher, kt, list(range(1, L + 1)), L),
        "AKT (all layers + MLM/NSP)": St.TransferLoss(teacher, kt, list(range(1, L + 1)), L, pd=no_logits_pd),
        "final stage (MLM + NSP + last-layer FMT)": St.TransferLoss(teacher, kt, [L], L, pd=no_logits_pd),
    }
    del last_fmt
    out = {"threads": torch.get_num_threads(), "load_average": os.getloadavg()[0], "batch": B, "seq": S}
    print(f"pre-training steps, batch {B} x {S}, {out['threads']} threads, load average {out['load_average']:.1f}")
    fwd = St.Forward(student.train())
    opt = build_optimizer(student, "lamb", 1e-3)
    for name, fn in losses.items():
        def step():
            totals = fn.denominators(batch)
            loss, _ = fn(fwd, batch, totals)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        wall, cpu, ops = _time(step, n)
        out[name], out[f"{name} ops"] = wall, ops
        print(f"  {name:<42} {wall:8.0f} ms/step wall {cpu:8.0f} ms CPU {ops:7,} ops")
    print(f"fine-tuning steps (AdamW), batch {B}")
    for who, model in (("student", MobileBertForSequenceClassification(student_config().replace(num_labels=2))),
                       ("teacher", load_pretrained(MobileBertForSequenceClassification, minilm_dir(), num_labels=2))):
        model.train()
        ft_opt = build_optimizer(model, "adamw", 1e-4)
        for seq in (64, 128):
            b = {k: v for k, v in _batch(B, seq, model.config.vocab_size).items() if k in
                 ("input_ids", "attention_mask", "token_type_ids")}
            y = torch.randint(0, 2, (B,))

            def step():
                model(**b, labels=y).loss.backward()
                ft_opt.step()
                ft_opt.zero_grad(set_to_none=True)
            wall, cpu, ops = _time(step, n)
            out[f"finetune {who} seq {seq}"], out[f"finetune {who} seq {seq} ops"] = wall, ops
            print(f"  {who} seq {seq:<34} {wall:8.0f} ms/step wall {cpu:8.0f} ms CPU {ops:7,} ops")
    out["load_average_end"] = os.getloadavg()[0]
    print(f"load average at the end {out['load_average_end']:.1f}")
    return out
