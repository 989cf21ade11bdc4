"""Benchmark: how many pre-training tokens per second the host can supply, in-process and with worker processes.

A GPU step at the issue's target (1M tokens/s) takes ~33 ms for a 256 x 128 batch; the host must build
batches at least that fast. This prepares `../shared/data/corpus` (or --corpus) into shards, then times
`PretrainingData.batch` (MLM + NSP, 15% masking, 20 predictions) called in-process and through
`StepPrefetcher` with --workers processes, the consumer doing nothing else. Usage:

    python benchmarks/data_throughput.py --batch 256 --seq 128 --steps 40 --workers 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    from mobilebert.data import MaskingConfig, PretrainingData, prepare
    from mobilebert.data.prefetch import StepPrefetcher

    from kt_study_rows import data_root  # beside this file: $MOBILEBERT_DATA, else ../shared/data

    root = data_root()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(root / "corpus"))
    ap.add_argument("--vocab", default=str(root / "bert-base-uncased" / "vocab.txt"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        prepare([args.corpus], args.vocab, shards)
        data = PretrainingData(shards, args.seq, masking=MaskingConfig(max_predictions=20), seed=0)
        fn = functools.partial(data.batch, batch_size=args.batch)
        fn(0)  # warm caches
        t = time.perf_counter()
        for step in range(args.steps):
            fn(step)
        inproc = time.perf_counter() - t
        pre = StepPrefetcher(fn, 0, args.steps, args.workers)
        t = time.perf_counter()
        for step in range(args.steps):
            pre(step)
        workers = time.perf_counter() - t  # includes starting the workers
        pre.close()
    tokens = args.batch * args.seq * args.steps
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "batch": args.batch, "seq": args.seq, "steps": args.steps,
                      "in_process": {"ms_per_batch": round(1e3 * inproc / args.steps, 1),
                                     "tokens_per_s": round(tokens / inproc)},
                      f"{args.workers}_workers": {"ms_per_batch": round(1e3 * workers / args.steps, 1),
                                                  "tokens_per_s": round(tokens / workers)}}, indent=2))


if __name__ == "__main__":
    main()
