"""`mobilebert info PRESET_OR_CHECKPOINT [--seq N]`: parameters and FLOPs beside the paper's Table 1."""

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="parameters and forward FLOPs of a preset or checkpoint, beside the paper")
    p.add_argument("model", help="a preset name (see --list) or a checkpoint folder with config.json")
    p.add_argument("--seq", type=int, default=128, help="sequence length for the FLOP count (default 128)")
    p.add_argument("--activations", metavar="TEXT", help="run TEXT through the model (a checkpoint folder with a "
                   "vocabulary) and report the largest activation of each layer against fp16's range")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mobilebert.info import describe

    return describe(args.model, seq=args.seq, activations=args.activations)
