"""`mobilebert evaluate CHECKPOINT [key=value ...] [--out DIR] [--test]`: score a fine-tuned checkpoint on
its task's dev set(s) with the exact GLUE/SQuAD metrics and print them as JSON.

The task and data settings come from the checkpoint's own `settings.yaml` (written by `finetune`);
`key=value` overrides change them, e.g. `data.dir=glue_data` on another machine or
`data.dev_file=other.tsv`. A checkpoint whose head does not fit the task (another label count or
label order) is refused. With --out, dev predictions (GLUE submission format or SQuAD predictions
JSON, which `mobilebert score` re-checks) are written there; --test also writes test predictions.
"""

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a fine-tuned checkpoint on its dev set (prints JSON)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a fine-tuned checkpoint folder (for example RUN/best)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides, e.g. data.dir=glue_data")
    p.add_argument("--out", help="write dev (and with --test, test) predictions to this folder")
    p.add_argument("--test", action="store_true", help="also predict the test split(s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mobilebert.recipes.evaluate import evaluate

    evaluate(args.checkpoint, args.overrides, args.out, args.test)
    return 0
