"""`mobilebert bench`: batch-1 latency (p50/p90) and size of MobileBERT beside BERT_BASE, per runtime.

    mobilebert bench [--models mobilebert,bert-base] [--runtimes torch-eager,ort-fp32,ort-int8,...]
                     [--seqs 128,384] [--threads 1,2] [--runs 30] [--warmup 5] [--out runs/bench]

Paper Table 4 (size and latency ratios) and Table 7 (latency). Writes results.json, table.md and
latency.png to --out and prints the table. Thread counts above the machine's cores are skipped.
"""

from __future__ import annotations


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            import argparse

            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    return parse


def add_parser(subparsers) -> None:
    from mobilebert.recipes.bench import RUNTIMES

    p = subparsers.add_parser("bench", help="latency and size, MobileBERT vs BERT_BASE, in several runtimes",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=_csv(str), default=("mobilebert", "bert-base"), help="presets to compare")
    p.add_argument("--runtimes", type=_csv(str), default=None,
                   help=f"any of {','.join(RUNTIMES)} (default: all; the executorch ones only when it is installed)")
    p.add_argument("--seqs", type=_csv(int), default=(128, 384), help="sequence lengths (default 128,384)")
    p.add_argument("--threads", type=_csv(int), default=(1, 2, 4), help="thread counts (default 1,2,4)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per setting (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--no-fold-nonorm", dest="fold_nonorm", action="store_false",
                   help="time MobileBERT with its NoNorms as trained (default: folded into the linears, and "
                        "the ONNX graphs fused as by `export onnx --fuse`)")
    p.add_argument("--out", default="runs/bench", help="folder for artifacts, results.json, table.md, latency.png")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from mobilebert.recipes.bench import bench

    return bench(args.models, args.runtimes, args.seqs, args.threads, args.runs, args.warmup, args.out,
                 fold_nonorm=args.fold_nonorm)
