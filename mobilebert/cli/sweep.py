"""`mobilebert sweep [CONFIG.yaml] [key=value ...] --out DIR`: the paper's fine-tuning search.

MobileBERT was fine-tuned with a search over batch sizes 16/32/48, learning rates (1-10)e-5 and
2-10 epochs (paper Sec. 4; it "usually needs a larger learning rate and more training epochs than
BERT"). This runs `finetune` for every (batch, lr, epochs) setting and every seed, appends each run's
best dev score to DIR/sweep.jsonl (a re-run skips finished runs, so an interrupted sweep continues),
and reports the mean ± std over seeds per setting, best first, as a table (stdout and DIR/sweep.md),
DIR/sweep.csv and a plot (DIR/sweep.png: dev score against learning rate, one line per batch size and
epoch count, error bars = std over seeds). Checkpoints are not kept unless --keep-checkpoints.
SIGTERM/SIGINT stop the current run with a checkpoint (exit 130); the same command continues it.
"""

from __future__ import annotations

import argparse

from mobilebert.recipes.sweep import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_SEEDS


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="grid search over batch size, learning rate, epochs and seeds (mean ± std)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml|key=value", help="base fine-tuning settings")
    p.add_argument("--out", required=True, help="the sweep folder")
    p.add_argument("--batch-sizes", default=DEFAULT_BATCH, help=f"comma-separated (default {DEFAULT_BATCH})")
    p.add_argument("--lrs", default=DEFAULT_LR, help=f"comma-separated (default {DEFAULT_LR})")
    p.add_argument("--epochs", default=DEFAULT_EPOCHS, help=f"comma-separated (default {DEFAULT_EPOCHS})")
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help=f"comma-separated (default {DEFAULT_SEEDS})")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every run's best checkpoint")
    p.set_defaults(func=run)


def _values(text: str, kind, name: str) -> list:
    from mobilebert.errors import ConfigError

    try:
        vals = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{name}: {text!r} is not a comma-separated list of numbers") from None
    if not vals or any(v <= 0 for v in vals):
        raise ConfigError(f"--{name}: give positive values, got {text!r}")
    return vals


def run(args: argparse.Namespace) -> int:
    from mobilebert.cli.finetune import split_args
    from mobilebert.recipes.sweep import sweep

    config, overrides = split_args(args.args)
    return sweep(config, overrides, args.out, batch_sizes=_values(args.batch_sizes, int, "batch-sizes"),
                 lrs=_values(args.lrs, float, "lrs"), epochs=_values(args.epochs, float, "epochs"),
                 seeds=_values(args.seeds, int, "seeds"), keep_checkpoints=args.keep_checkpoints)
