"""Training metrics: JSONL (the record tests read back), TensorBoard, and the loss-curve plot.

One JSON object per logged step is appended to `RUN/metrics.jsonl`:
    {"stage": "pkt-3", "step": 120, "loss": 1.23, "fmt": ..., "lr": 0.0015, "tokens_per_s": 5100.0, "time": ...}
The same scalars go to TensorBoard under `RUN/tensorboard/` as `<stage>/<key>` when
`torch.utils.tensorboard` can be imported. Only rank 0 writes; other ranks get a disabled logger.

On `--resume` the logger drops the records written after the checkpoint it resumes from (a killed
run may have logged steps it never checkpointed), so the file always reads as one clean trajectory.

API:
    MetricsLogger(run_dir, enabled=True, tensorboard=True, resume_from=None)
        .log(stage, step, metrics: dict) / .log_event(kind, **fields) / .close()
    read_metrics(path) -> list[dict]
    plot_losses(jsonl_path, png_path) -> Path | None
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from mobilebert import atomic

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict]:
    """All complete records of a metrics file (a torn last line from a crash is skipped)."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _truncate_after(path: Path, stage: str, step: int) -> None:
    """Keep records up to and including (stage, step); records are in chronological order."""
    records = read_metrics(path)
    keep = 0
    seen_stage = False
    for i, r in enumerate(records):
        if r.get("stage") == stage:
            seen_stage = True
            if r.get("step", 0) <= step:
                keep = i + 1
            else:
                break
        elif seen_stage:  # a later stage: beyond the checkpoint
            break
        elif "step" in r:
            keep = i + 1  # an earlier stage's record
    kept = records[:keep]
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsLogger:
    """Rank-0 metrics sink: JSONL + optional TensorBoard."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 resume_from: tuple[str, int] | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._fh = None
        self._tb = None
        if not enabled:
            return
        with atomic.disk_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume_from is not None and self.path.is_file():
                _truncate_after(self.path, *resume_from)
            elif resume_from is None and self.path.is_file():
                self.path.unlink()
            self._fh = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # tensorboard not installed: JSONL alone is the record
                self._tb = None

    def log(self, stage: str, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"stage": stage, "step": int(step)}
        for k, v in metrics.items():
            record[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        record["time"] = time.time()
        self._append(record)
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("stage", "step", "time") and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(f"{stage}/{k}", v, int(step))

    def log_event(self, kind: str, **fields) -> None:
        """A non-step record (stage start/end, resume), kept in the same file."""
        if not self.enabled:
            return
        self._append({"event": kind, **fields, "time": time.time()})

    def _append(self, record: dict) -> None:
        # An append log, not an atomic file: a torn last line (crash, full disk) is skipped by read_metrics.
        with atomic.disk_errors(self.path):
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_losses(jsonl_path: str | Path, png_path: str | Path) -> Path | None:
    """One panel per stage: total loss and each loss term against step. None if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    records = [r for r in read_metrics(jsonl_path) if "step" in r and "loss" in r]
    if not records:
        return None
    stages: dict[str, list[dict]] = {}
    for r in records:
        stages.setdefault(r["stage"], []).append(r)
    skip = {"stage", "step", "time", "lr", "tokens_per_s", "grad_norm", "tokens"}
    n = len(stages)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (stage, rs) in zip(axes.flat, stages.items()):
        keys = [k for k in rs[0] if k not in skip and not k.endswith("acc") and isinstance(rs[0][k], float)]
        for k in keys:
            xs = [r["step"] for r in rs if k in r]
            ys = [r[k] for r in rs if k in r]
            ax.plot(xs, ys, label=k, linewidth=2 if k == "loss" else 1)
        ax.set_title(stage)
        ax.set_xlabel("step")
        if all(r["loss"] > 0 for r in rs):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    png_path = Path(png_path)
    try:
        with atomic.atomic_path(png_path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return png_path
