"""Benchmark: one LAMB step over full-size MobileBERT's parameters, per-parameter loop vs multi-tensor (foreach).

The two are interleaved in one run (median of --steps, the first of each dropped). On a GPU the foreach step is
the default (one kernel per operation instead of ~12 per tensor); on CPU the loop is, because this measures it
faster there. Usage:

    python benchmarks/optimizer_step.py --threads 1 --steps 6            # CPU
    python benchmarks/optimizer_step.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def main() -> None:
    from mobilebert import get_config
    from mobilebert.engine.optim import Lamb, param_groups
    from mobilebert.heads import MobileBertForPreTraining

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = MobileBertForPreTraining(get_config("mobilebert")).to(args.device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opts = {"loop": Lamb(param_groups(model, 0.01), lr=1e-4, foreach=False),
            "foreach": Lamb(param_groups(model, 0.01), lr=1e-4, foreach=True)}
    times = {k: [] for k in opts}
    for _ in range(args.steps):
        for name, opt in opts.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            opt.step()
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "device": args.device,
                      "threads": args.threads, "torch": torch.__version__,
                      "parameter_tensors": sum(1 for _ in model.parameters()),
                      "ms_per_step": {k: round(1e3 * statistics.median(v[1:]), 1) for k, v in times.items()}},
                     indent=2))


if __name__ == "__main__":
    main()
