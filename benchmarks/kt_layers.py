"""Where the knowledge-transfer study's students lose the teacher (issue 11: "where a goal is missed, say what you
found out about why"): zero-shot STS-B layer by layer.

For the teacher (all-MiniLM-L6-v2) and every student the study has pre-trained (runs/kt-study: random, bare,
pkt-fmt, pkt-fmt-at, jkt, akt; rows not yet trained are left out), each STS-B dev sentence is encoded alone and its
token states are mean-pooled at the embedding output and after every layer (mobilebert.tasks.zeroshot). Per layer
two numbers:

    gold     Spearman of the pair cosines with the gold scores (the study's zero-shot column is the last layer)
    teacher  Spearman of the pair cosines with the teacher's pair cosines at the layer the student's layer learns
             from (the study's students have the teacher's depth, so the same index): how closely the student
             reproduces the teacher's similarity judgements, whatever their quality

    python benchmarks/kt_layers.py [--state runs/kt-study] [--out docs/kt-layers.md] [--pairs N]

Costs seconds per model on 1 thread (1,500 pairs, 6 layers); writes a Markdown table with machine, versions, date.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kt_study import ROWS, data_root, environment, minilm_dir  # noqa: E402

LABELS = {"teacher": "teacher (all-MiniLM-L6-v2)", "random": "student, random weights",
          "bare": "bare (MLM + NSP, no teacher)", "pkt-fmt": "PKT, feature maps + final stage",
          "pkt-fmt-at": "PKT, feature maps + attention + final stage", "jkt": "JKT + final stage", "akt": "AKT"}


def model_dirs(state: Path) -> dict[str, Path]:
    """Row -> model folder, for the rows whose model exists."""
    found = {"teacher": minilm_dir(), "random": state / "random-student"}
    found.update({row: state / "pretrain" / row / "student" for row in ROWS[2:]})
    return {row: p for row, p in found.items() if (p / "config.json").is_file()}


def measure(folder: Path, a: list[str], b: list[str], vocab: Path | None = None):
    """(L + 1, N) pair cosines of the model in `folder` (its own vocabulary, or `vocab`: a training checkpoint)."""
    from mobilebert.checkpoint import load_pretrained
    from mobilebert.model import MobileBertModel
    from mobilebert.tasks.zeroshot import pair_cosines_by_layer
    from mobilebert.tokenizer import Tokenizer

    model = load_pretrained(MobileBertModel, folder)
    return pair_cosines_by_layer(model, Tokenizer.from_file(vocab or folder), a, b)


def table(cos: dict, gold) -> list[str]:
    """Markdown rows: per model, gold / teacher Spearman at layers 0 (embeddings) .. L."""
    from mobilebert.tasks.metrics import spearman

    depth = max(len(c) for c in cos.values())
    head = "| model | " + " | ".join(["embeddings", *[f"layer {i}" for i in range(1, depth)]]) + " |"
    lines = [head, "|---|" + "---:|" * depth]
    teacher = cos["teacher"]
    for row, c in cos.items():
        cells = []
        for i in range(depth):
            if i >= len(c):
                cells.append("–")
                continue
            g = spearman(c[i], gold)
            t = "" if row == "teacher" or i >= len(teacher) else f" / {spearman(c[i], teacher[i]):.3f}"
            cells.append(f"{g:.3f}{t}")
        lines.append(f"| {LABELS[row]} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--state", default=str(REPO / "runs" / "kt-study"), help="the study's folder (its models)")
    p.add_argument("--out", default=str(REPO / "docs" / "kt-layers.md"))
    p.add_argument("--pairs", type=int, default=0, help="only the first N dev pairs (0: all 1,500)")
    args = p.parse_args()
    from mobilebert.tasks.zeroshot import read_sts_pairs

    dev = data_root() / "glue" / "STS-B" / "dev.tsv"
    a, b, gold = read_sts_pairs(dev)
    if args.pairs:
        a, b, gold = a[:args.pairs], b[:args.pairs], gold[:args.pairs]
    cos, seconds = {}, {}
    for row, folder in model_dirs(Path(args.state)).items():
        t0 = time.time()
        cos[row] = measure(folder, a, b)
        seconds[row] = time.time() - t0
        print(f"{row}: {seconds[row]:.1f} s", flush=True)
    env = environment()
    text = ["# Zero-shot STS-B layer by layer (knowledge-transfer study)", "",
            f"Produced by `python benchmarks/kt_layers.py` on {time.strftime('%Y-%m-%d')}: {env['cpu']} "
            f"({env['cores']} cores), Python {env['python']}, "
            f"{', '.join(f'{k} {env[k]}' for k in ('torch', 'transformers', 'tokenizers') if k in env)}, "
            f"commit {env['commit']}; {sum(seconds.values()):.0f} s in all. "
            f"STS-B dev, {len(a)} pairs. Each cell: Spearman of the pair cosines of mean-pooled states with the gold "
            "scores / with the teacher's pair cosines at the same layer. The last column is the study's zero-shot "
            "column.", "", *table(cos, gold), ""]
    out = Path(args.out)
    out.write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
