"""Benchmark: batch-1 latency and size of MobileBERT beside BERT_BASE in every runtime (paper Tables 4 and 7).

A thin driver over `mobilebert.recipes.bench` (the code behind `mobilebert bench`) with the settings
used for docs/benchmarks.md, plus the checks of the deployment issue:

- MobileBERT int8 (ONNX Runtime, 1 thread, seq 128) p50 <= --int8-target-ms (35 ms);
- BERT_BASE / MobileBERT p50 in that runtime >= --min-ratio (4x; the FLOPs ratio is 4.15x).

    python benchmarks/deploy_latency.py --out runs/bench                 # full grid (tens of minutes)
    python benchmarks/deploy_latency.py --quick --out runs/bench-quick   # ONNX Runtime only, seq 128

Latency on a shared machine depends on what else runs: the report records the load average at the
start and the end; compare runs only at similar load. Exit status 0 when both checks pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from mobilebert.recipes.bench import RUNTIMES, run_bench, save_report

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", default="1,2,4", help="counts above the machine's cores are skipped")
    ap.add_argument("--quick", action="store_true", help="ONNX Runtime fp32/int8 at seq 128 only")
    ap.add_argument("--int8-target-ms", type=float, default=35.0)
    ap.add_argument("--min-ratio", type=float, default=4.0)
    args = ap.parse_args(argv)
    runtimes = ("ort-fp32", "ort-int8") if args.quick else RUNTIMES
    seqs = (128,) if args.quick else (128, 384)
    threads = tuple(int(t) for t in args.threads.split(","))
    report = run_bench(("mobilebert", "bert-base"), runtimes, seqs, threads, args.runs, args.warmup, workdir=args.out)
    paths = save_report(report, args.out)
    print(paths["markdown"].read_text())
    small, big = report.get("mobilebert", "ort-int8", 128, 1), report.get("bert-base", "ort-int8", 128, 1)
    ok = True
    if small is not None:
        verdict = "ok" if small.p50_ms <= args.int8_target_ms else "MISSED"
        ok &= small.p50_ms <= args.int8_target_ms
        print(f"MobileBERT int8, 1 thread, seq 128: p50 {small.p50_ms:.1f} ms (target <= {args.int8_target_ms:g}): {verdict}")
    if small is not None and big is not None:
        ratio = big.p50_ms / small.p50_ms
        ok &= ratio >= args.min_ratio
        print(f"BERT_BASE / MobileBERT, ONNX Runtime int8: {ratio:.2f}x (target >= {args.min_ratio:g}x): "
              f"{'ok' if ratio >= args.min_ratio else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
