"""The `mobilebert sweep` job: the paper's fine-tuning search, mean ± std over seeds per setting.

MobileBERT was fine-tuned with a search over batch sizes 16/32/48, learning rates (1-10)e-5 and 2-10 epochs
(paper Sec. 4; it "usually needs a larger learning rate and more training epochs than BERT"). `sweep` runs
the `finetune` recipe for every (batch, lr, epochs) setting and every seed, appends each run's best dev score
to OUT/sweep.jsonl (a re-run skips finished runs, so an interrupted sweep continues), and reports the
mean ± std over seeds per setting, best first: a table (stdout and OUT/sweep.md), OUT/sweep.csv and a plot
(OUT/sweep.png: dev score against learning rate, one line per batch size and epoch count, error bars = std
over seeds). Checkpoints are not kept unless `keep_checkpoints`. SIGTERM/SIGINT stop the current run with a
checkpoint (exit 130); the same command continues it.

Order: check the base settings, run the grid (`_run_grid`), read the records back, summarise, write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mobilebert.atomic import atomic_path, write_text

# The default grid spans the paper's ranges (Sec. 4).
DEFAULT_BATCH = "16,32,48"
DEFAULT_LR = "1e-5,2e-5,3e-5,5e-5,1e-4"
DEFAULT_EPOCHS = "2,3,5,10"
DEFAULT_SEEDS = "1,2,3"


def sweep(config: str | None, overrides: list[str], out, batch_sizes: list[int], lrs: list[float],
          epochs: list[float], seeds: list[int], keep_checkpoints: bool = False) -> int:
    """Fine-tune every grid point not yet recorded in OUT/sweep.jsonl, then write the summary.

    Returns the exit status: 0 done, 130 when SIGTERM/SIGINT stopped a run (it resumes next time)."""
    from mobilebert.recipes.finetune_settings import FinetuneSettings
    from mobilebert.recipes.settings import load_settings

    grid = [(bs, lr, ep, seed) for bs in batch_sizes for lr in lrs for ep in epochs for seed in seeds]
    load_settings(FinetuneSettings, config, overrides)  # fail on a bad key before anything is written
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "sweep.jsonl"
    try:
        code = _run_grid(grid, config, overrides, out, log, keep_checkpoints)
    except BaseException:
        if created and not log.exists():  # nothing finished: leave no folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    if code:
        return code
    done = _done(log)
    records = [done[run_name(*g)] for g in grid]
    metric = records[0]["metric"]
    rows = summarize(records)
    text = table(rows, metric)
    best = rows[0]
    summary = (f"best: batch {best['batch_size']}, lr {best['lr']:g}, {best['epochs']:g} epochs: "
               f"{metric} {best['mean']:.4f} ± {best['std']:.4f} over {best['runs']} seed(s)")
    print(text + "\n\n" + summary)
    write_text(out / "sweep.md", text + "\n\n" + summary + "\n")
    write_text(out / "sweep.csv", "batch_size,lr,epochs,mean,std,runs\n" + "".join(
        f"{r['batch_size']},{r['lr']:g},{r['epochs']:g},{r['mean']},{r['std']},{r['runs']}\n" for r in rows))
    plot(rows, metric, out / "sweep.png")
    return 0


def run_name(bs: int, lr: float, ep: float, seed: int) -> str:
    return f"bs{bs}_lr{lr:g}_ep{ep:g}_seed{seed}"


def _run_grid(grid: list, config, overrides: list[str], out: Path, log: Path, keep: bool) -> int:
    """Run every grid point not yet in `log`; 130 when one was stopped by SIGTERM/SIGINT (it resumes next time)."""
    from mobilebert.recipes.finetune import finetune
    from mobilebert.recipes.finetune_settings import FinetuneSettings
    from mobilebert.recipes.settings import load_settings

    done = _done(log)
    for i, (bs, lr, ep, seed) in enumerate(grid, 1):
        name = run_name(bs, lr, ep, seed)
        if name in done:
            continue
        folder = out / "runs" / name
        s = load_settings(FinetuneSettings, config, overrides + [
            f"out={folder}", f"train.batch_size={bs}", f"optim.lr={lr}", f"train.epochs={ep}",
            f"train.seed={seed}", "train.max_steps=0", f"train.save_best={keep}", f"data.predict_test={keep}"])
        print(f"[{i}/{len(grid)}] {name}", flush=True)
        # A run an earlier sweep left interrupted continues from its checkpoint; one stopped before its
        # first checkpoint (a SIGKILL) starts again.
        resume = (folder / "checkpoints" / "latest").is_file()
        if not resume and folder.exists():
            shutil.rmtree(folder)
        res = finetune(s, resume=resume)
        if res.get("interrupted"):
            return 130
        rec = {"run": name, "batch_size": bs, "lr": lr, "epochs": ep, "seed": seed, "metric": res["main_metric"],
               "score": (res["best"] or {}).get(res["main_metric"]), "best": res["best"], "steps": res["steps"]}
        _append(log, rec)
        if not keep:
            shutil.rmtree(folder / "tensorboard", ignore_errors=True)
    return 0


def _append(log: Path, rec: dict) -> None:
    """One more line in sweep.jsonl, written atomically (the whole file is small: one line per run)."""
    text = log.read_text(encoding="utf-8") if log.is_file() else ""
    if text and not text.endswith("\n"):  # a torn last line left by an older version: keep records apart
        text += "\n"
    write_text(log, text + json.dumps(rec) + "\n")


def _done(log: Path) -> dict:
    """Finished runs recorded in sweep.jsonl, by name."""
    done = {}
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                done[r["run"]] = r
            except (ValueError, KeyError):
                continue   # a torn last line from an interrupted sweep
    return done


def summarize(records: list[dict]) -> list[dict]:
    """Group runs by (batch, lr, epochs): mean and sample std of the score over seeds, best first."""
    import numpy as np

    groups: dict[tuple, list[float]] = {}
    for r in records:
        key = (r["batch_size"], r["lr"], r["epochs"])
        groups.setdefault(key, []).append(float("nan") if r["score"] is None else r["score"])
    rows = []
    for (bs, lr, ep), scores in groups.items():
        a = np.array(scores, dtype=float)
        rows.append({"batch_size": bs, "lr": lr, "epochs": ep, "mean": float(np.nanmean(a)) if np.isfinite(a).any()
                     else float("nan"), "std": float(np.nanstd(a, ddof=1)) if np.isfinite(a).sum() > 1 else 0.0,
                     "runs": len(a)})
    rows.sort(key=lambda r: (-r["mean"] if np.isfinite(r["mean"]) else float("inf")))
    return rows


def table(rows: list[dict], metric: str) -> str:
    lines = [f"| batch | lr | epochs | {metric} mean ± std | seeds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch_size']} | {r['lr']:g} | {r['epochs']:g} | {r['mean']:.4f} ± {r['std']:.4f} | "
                     f"{r['runs']} |")
    return "\n".join(lines)


def plot(rows: list[dict], metric: str, path) -> bool:
    """Dev score against learning rate (log x), one line per (batch, epochs); False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # matplotlib is optional (the `train` extra)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for bs, ep in sorted({(r["batch_size"], r["epochs"]) for r in rows}):
        pts = sorted((r["lr"], r["mean"], r["std"]) for r in rows if (r["batch_size"], r["epochs"]) == (bs, ep))
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=f"batch {bs}, {ep:g} epochs")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"dev {metric} (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return True
