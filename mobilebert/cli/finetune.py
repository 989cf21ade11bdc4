"""`mobilebert finetune [CONFIG.yaml] [key=value ...] [--out DIR]`: fine-tune on a GLUE task, a custom
CSV/TSV/JSONL task or SQuAD, optionally distilling from a fine-tuned teacher.

Examples:
    mobilebert finetune data.task=sst-2 data.dir=glue_data model.init=ckpt/ optim.lr=5e-5 train.epochs=3
    mobilebert finetune data.task=squad data.dir=squad/ model.init=ckpt/ train.batch_size=32 \\
        optim.lr=4e-5 train.epochs=5          # max_seq 384, doc_stride 128, max_query 64 by default
    mobilebert finetune data.task=custom data.train_file=train.csv data.dev_file=dev.csv \\
        data.text_a=review data.label=stars model.init=ckpt/
    mobilebert finetune data.task=rte data.dir=glue_data model.init=student/ distill.teacher=teacher/best
    torchrun --nproc_per_node 8 -m mobilebert finetune data.task=squad ...   # DDP: batch_size is global

Settings are `mobilebert.recipes.finetune_settings.FinetuneSettings` (groups model, data, optim, train,
distill). The run folder gets metrics.jsonl, tensorboard/, best/ (weights, tokenizer, settings.yaml),
dev_predictions/, submission/ (GLUE test predictions) and results.json; while it runs, checkpoints/
(resumable with --resume; removed when the run finishes).
Exit status: 0 done, 2 bad input or a run too large for this machine (nothing written; `train.allow_large=true`
starts it anyway), 130 stopped by SIGTERM/SIGINT (a checkpoint was saved; in set-up or the first step nothing is
kept of a fresh run).
"""

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune on GLUE, a custom task or SQuAD (optionally with a teacher)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml|key=value",
                   help="an optional YAML file, then dotted overrides such as optim.lr=3e-5 train.epochs=4")
    p.add_argument("--out", help="the run folder (same as out=DIR)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in the run folder from its newest checkpoint "
                        "(SIGTERM/SIGINT save one; train.save_every=N saves every N steps)")
    p.set_defaults(func=run)


def split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """The one item without '=' is the config file; the rest are overrides."""
    from mobilebert.errors import ConfigError

    configs = [a for a in items if "=" not in a]
    if len(configs) > 1:
        raise ConfigError(f"give at most one config file, got {', '.join(configs)}")
    return (configs[0] if configs else None), [a for a in items if "=" in a]


def run(args: argparse.Namespace) -> int:
    from mobilebert.recipes.finetune import finetune_from_config

    config, overrides = split_args(args.args)
    return finetune_from_config(config, overrides, out=args.out, resume=args.resume)
