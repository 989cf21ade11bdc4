"""End-of-run report of `mobilebert train`: what was made, how well it predicts, what it cost.

Writes OUT/summary.json and OUT/loss_curves.png and prints a short table. The evaluation scores the
final teacher and student on `data.eval_batches` batches drawn with a seed no training stage uses
(fresh masks and sentence pairs from the same corpus, not a held-out split): MLM loss and accuracy,
NSP accuracy. With `data.sts_dev`, teacher, student and the untrained student are also scored zero-shot on
STS-B (what a sentence encoder teacher such as all-MiniLM-L6-v2 passes on, with no fine-tuning).
"""

from __future__ import annotations

import torch

from mobilebert.atomic import write_json
from mobilebert.distill import steps as S
from mobilebert.engine.logging import METRICS_FILE, plot_losses, read_metrics

EVAL_BATCH = 32


@torch.no_grad()
def evaluate(model, data, batches: int, device) -> dict:
    """MLM loss/accuracy and NSP accuracy of a `MobileBertForPreTraining` (eval mode)."""
    was = model.training
    model.eval()
    mlm_sum = mlm_hit = mlm_n = nsp_hit = nsp_n = 0.0
    for i in range(batches):
        b = {k: v.to(device) for k, v in data.batch(i, EVAL_BATCH, 0, 1).items()}
        out = S.run_model(model, b, heads=True)
        y = b["labels"][b["labels"] != -100]
        logits = out["mlm_logits"].float()
        mlm_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        mlm_hit += (logits.argmax(-1) == y).sum().item()
        mlm_n += y.numel()
        nsp_hit += (out["nsp_logits"].argmax(-1) == b["next_sentence_label"].view(-1)).sum().item()
        nsp_n += b["input_ids"].shape[0]
    model.train(was)
    return {"mlm_loss": mlm_sum / max(mlm_n, 1), "mlm_accuracy": mlm_hit / max(mlm_n, 1),
            "nsp_accuracy": nsp_hit / max(nsp_n, 1), "masked_tokens": int(mlm_n)}


def zero_shot(p) -> dict:
    """Zero-shot STS-B Spearman (mean-pooled last-layer states, no fine-tuning; tasks/zeroshot.py) of the
    teacher, the student and the same student untrained: how much of the teacher the student kept."""
    from mobilebert.heads import MobileBertForPreTraining
    from mobilebert.tasks.zeroshot import zero_shot_sts
    from mobilebert.tokenizer import Tokenizer

    tok = Tokenizer.from_file(p.shards)
    torch.manual_seed(p._stage_seed("untrained"))
    untrained = MobileBertForPreTraining(p.student_cfg).to(p.device)
    out = {}
    for name, model in (("teacher", p.teacher), ("student", p.student), ("untrained student", untrained)):
        if model is not None:
            out.setdefault(name, {})["sts_b_spearman"] = zero_shot_sts(model, tok, p.s.data.sts_dev,
                                                                       max_length=p.s.data.seq_len)
    return out


def _stage_losses(records: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for r in records:
        if "step" in r and "loss" in r:
            d = out.setdefault(r["stage"], {"first_loss": r["loss"], "first_step": r["step"]})
            d.update(last_loss=r["loss"], last_step=r["step"], tokens_per_s=r.get("tokens_per_s"))
    return out


def write_report(p, seconds: float) -> dict:
    """`p` is the finished `Pipeline`."""
    out = p.out
    evals = {}
    if p.s.data.eval_batches:
        data = p._data(p._stage_seed("eval"))
        bridge = getattr(p, "bridge", None)
        for name, model in (("teacher", p.teacher), ("student", p.student)):
            if name == "teacher" and bridge is not None and not bridge.teacher_heads["mlm"]:
                continue  # a teacher without an MLM head (e.g. sentence-transformers): nothing to score
            if model is not None:
                evals[name] = evaluate(model, data, p.s.data.eval_batches, p.device)
    if p.s.data.sts_dev:
        evals.update(zero_shot(p))
    losses = _stage_losses(read_metrics(out / METRICS_FILE))
    est = {r["stage"]: r for r in getattr(p, "estimate", [])}
    stages = []
    for st in p.stages:
        row = {"stage": st.name, "steps": st.train.steps, **losses.get(st.name, {})}
        if st.name in est:
            row["estimated_minutes"] = round(est[st.name]["hours"] * 60, 2)
        stages.append(row)
    outputs = {name: str(out / name) for name in ("teacher", "student") if (out / name).is_dir()}
    plot = plot_losses(out / METRICS_FILE, out / "loss_curves.png")
    summary = {"run": str(out), "seconds": round(seconds, 1), "stages": stages, "eval": evals,
               "outputs": outputs, "loss_plot": str(plot) if plot else None,
               "runs_this_session": [{k: v for k, v in s.items() if k != "last"} for s in p.summaries]}
    write_json(out / "summary.json", summary, indent=1)

    print(f"\nfinished in {seconds / 60:.1f} min; run folder {out}")
    print(f"  {'stage':<10} {'steps':>7} {'first loss':>11} {'last loss':>10} {'tok/s':>9}")
    for r in stages:
        if "last_loss" in r:
            print(f"  {r['stage']:<10} {r['steps']:>7} {r['first_loss']:>11.4g} {r['last_loss']:>10.4g} "
                  f"{(r.get('tokens_per_s') or 0):>9.0f}")
    for name, e in evals.items():
        if "mlm_loss" in e:
            print(f"  {name}: MLM loss {e['mlm_loss']:.3f}, MLM accuracy {e['mlm_accuracy']:.1%}, "
                  f"NSP accuracy {e['nsp_accuracy']:.1%} ({e['masked_tokens']} masked tokens)")
    sts = {name: evals[name]["sts_b_spearman"] for name in ("teacher", "student", "untrained student")
           if "sts_b_spearman" in evals.get(name, {})}
    if sts:
        kept = (f"; the student keeps {sts['student'] / sts['teacher']:.0%} of the teacher's"
                if sts.get("teacher") and "student" in sts else "")
        print("  zero-shot STS-B dev Spearman (mean-pooled last layer, no fine-tuning): "
              + ", ".join(f"{name} {v:.3f}" for name, v in sts.items()) + kept)
    for name, path in outputs.items():
        print(f"  {name} model (Hugging Face layout): {path}")
    print(f"  metrics: {out / METRICS_FILE}; loss curves: {plot}; summary: {out / 'summary.json'}", flush=True)
    return summary
