"""Tables and the chart for `mobilebert bench` (paper Table 4's size/speed ratios, Table 7's latency).

Kept apart from the timing code (recipes/bench.py imports this module, never the reverse): the result
records (`Result`, `BenchReport`), the paper's numbers, the markdown table and the chart. The ratio
columns are BERT_BASE / MobileBERT from the same run and runtime; the paper's are 4.3x (size, 109M / 25.3M
parameters) and 5.5x (latency, 342 / 62 ms on a Pixel 4 with TFLite).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mobilebert.atomic import atomic_path

PAPER = {"size_ratio": 109 / 25.3, "speed_ratio": 342 / 62, "mobilebert_ms_pixel4": 62, "bert_base_ms_pixel4": 342}


@dataclass
class Result:
    model: str
    runtime: str
    seq: int
    threads: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int


@dataclass
class BenchReport:
    machine: dict
    results: list[Result] = field(default_factory=list)
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> artifact -> bytes
    notes: list[str] = field(default_factory=list)

    def get(self, model, runtime, seq, threads) -> Result | None:
        return next((r for r in self.results if (r.model, r.runtime, r.seq, r.threads) == (model, runtime, seq, threads)), None)


NAMES = {"mobilebert": "MobileBERT", "bert-base": "BERT_BASE"}


def _fmt(r) -> str:
    return "–" if r is None else f"{r.p50_ms:.1f} / {r.p90_ms:.1f}"


def _pair(report, small, big):
    """The two models to compare: as given, else the first two benchmarked (the small one first)."""
    order = list(dict.fromkeys(r.model for r in report.results)) or list(report.sizes)
    small = small or (order[0] if order else "mobilebert")
    big = big or (order[1] if len(order) > 1 else None)
    return small, big


def markdown_table(report, small: str | None = None, big: str | None = None) -> str:
    small, big = _pair(report, small, big)

    m = report.machine
    lines = [f"Machine: {m.get('cpu')} ({m.get('cores')} cores); torch {m.get('torch')}, onnxruntime "
             f"{m.get('onnxruntime')}, executorch {m.get('executorch')}, Python {m.get('python')}. "
             f"Load average {m.get('load_average', 0):.2f} at start, {m.get('load_average_end', 0):.2f} at end.",
             "", "Latency in ms, batch 1, p50 / p90 over "
             f"{report.results[0].runs if report.results else 0} runs after warm-up:", ""]
    has_big = big is not None and any(r.model == big for r in report.results)
    head = f"| runtime | seq | threads | {NAMES.get(small, small)} |"
    rule = "|---|---:|---:|---:|"
    if has_big:
        head += f" {NAMES.get(big, big)} | {NAMES.get(big, big)} / {NAMES.get(small, small)} (p50) |"
        rule += "---:|---:|"
    lines += [head, rule]
    keys = sorted({(r.runtime, r.seq, r.threads) for r in report.results},
                  key=lambda k: (k[1], k[2], [r.runtime for r in report.results].index(k[0])))
    for runtime, seq, t in keys:
        a, b = report.get(small, runtime, seq, t), report.get(big, runtime, seq, t)
        row = f"| {runtime} | {seq} | {t} | {_fmt(a)} |"
        if has_big:
            ratio = f"{b.p50_ms / a.p50_ms:.2f}x" if a and b else "–"
            row += f" {_fmt(b)} | {ratio} |"
        lines.append(row)
    if report.sizes:
        lines += ["", "Size on disk (MiB):", "", f"| artifact | {' | '.join(NAMES.get(k, k) for k in report.sizes)} |"
                  + (" ratio |" if has_big and small in report.sizes else ""),
                  "|---|" + "---:|" * (len(report.sizes) + (1 if has_big and small in report.sizes else 0))]
        artifacts = list(dict.fromkeys(a for s in report.sizes.values() for a in s))
        for art in artifacts:
            vals = [report.sizes[k].get(art) for k in report.sizes]
            row = f"| {art} | " + " | ".join("–" if v is None else f"{v / 2**20:.1f}" for v in vals) + " |"
            if has_big and small in report.sizes:
                s, b = report.sizes[small].get(art), report.sizes.get(big, {}).get(art)
                row += f" {b / s:.2f}x |" if s and b else " – |"
            lines.append(row)
    if has_big:
        lines += ["", f"Paper (Table 4, Pixel 4, TFLite): size ratio {PAPER['size_ratio']:.1f}x, "
                      f"latency ratio {PAPER['speed_ratio']:.1f}x ({PAPER['bert_base_ms_pixel4']} / "
                      f"{PAPER['mobilebert_ms_pixel4']} ms)."]
    for note in report.notes:
        lines.append(f"Note: {note}.")
    return "\n".join(lines)


def plot(report, path, small: str | None = None, big: str | None = None) -> Path | None:
    """Grouped bars: p50 latency per runtime, one panel per (seq, threads), both models side by side."""
    small, big = _pair(report, small, big)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = sorted({(r.seq, r.threads) for r in report.results})
    runtimes = list(dict.fromkeys(r.runtime for r in report.results))
    models = [m for m in (small, big) if any(r.model == m for r in report.results)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    width = 0.8 / max(len(models), 1)
    for ax, (seq, t) in zip(axes[0], panels):
        for i, model in enumerate(models):
            vals = [(report.get(model, rt, seq, t).p50_ms if report.get(model, rt, seq, t) else 0) for rt in runtimes]
            xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(runtimes))]
            ax.bar(xs, vals, width, label=NAMES.get(model, model))
        ax.set_xticks(range(len(runtimes)))
        ax.set_xticklabels(runtimes, rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"seq {seq}, {t} thread{'s' if t > 1 else ''}")
        ax.set_ylabel("p50 latency (ms, log scale)")
        ax.grid(axis="y", alpha=0.3)
    if models:
        axes[0][0].legend()
    fig.suptitle(f"Batch-1 latency on {report.machine.get('cpu')}")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # the format from the final name: the temporary's ends in ".tmp"
            fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return Path(path)

