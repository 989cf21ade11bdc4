"""`mobilebert train CONFIG.yaml [key=value ...] [--resume] [--out DIR]`: the whole pre-training pipeline.

Teacher pre-training, knowledge transfer (PKT/JKT/AKT, or the bare baseline) and pre-training
distillation, any subset, from one YAML file (see configs/*.yaml and mobilebert/recipes/train_settings.py).
Multi-GPU / multi-node: `torchrun --nproc_per_node N -m mobilebert train CONFIG.yaml`.
Exit status: 0 done, 2 bad input or a run too large for this machine (nothing written; `run.allow_large=true`
starts it anyway), 128+signal when SIGTERM/SIGINT stopped it after saving a checkpoint (continue with
`--resume`), 130 when they stopped it in set-up or in a stage's first step (a fresh run's folder is removed).
"""

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="pre-train a teacher, transfer its knowledge to a student, distil (one YAML)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="CONFIG.yaml [key=value ...]",
                   help="the config file, then dotted overrides such as kt.strategy=jkt pd.steps=100")
    p.add_argument("--out", help="the run folder (same as run.out=DIR)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the run folder from its latest checkpoint (mid-stage)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the settings, print them and the cost estimate, write nothing")
    p.set_defaults(func=run)


def split_args(items: list[str], args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The one item without '=' is the config file; the rest are overrides (--out/--resume may come last)."""
    from mobilebert.errors import ConfigError

    items = list(items)
    for flag in ("--resume", "--dry-run"):
        while flag in items:
            items.remove(flag)
            setattr(args, flag[2:].replace("-", "_"), True)
    for i, a in enumerate(items):
        if a == "--out" or a.startswith("--out="):
            value = a.split("=", 1)[1] if "=" in a else (items[i + 1] if i + 1 < len(items) else None)
            if value is None:
                raise ConfigError("--out: expected a folder")
            args.out = value
            del items[i:i + (1 if "=" in a else 2)]
            break
    unknown = [a for a in items if a.startswith("--")]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown option (use key=value to change a setting)")
    configs = [a for a in items if "=" not in a]
    if len(configs) > 1:
        raise ConfigError(f"give one config file, got {', '.join(configs)}")
    return (configs[0] if configs else None), [a for a in items if "=" in a]


def run(args: argparse.Namespace) -> int:
    from mobilebert.recipes.train import train_from_config

    config, overrides = split_args(args.args, args)
    return train_from_config(config, overrides, out=args.out, resume=args.resume, dry_run=args.dry_run)
