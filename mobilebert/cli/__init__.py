"""The `mobilebert` command: one sub-command per job, each in its own module under `mobilebert.cli`.

Each module exposes `add_parser(subparsers)` and sets `func` on its parser. Modules import torch and
friends inside `func`, so `mobilebert --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mobilebert.errors import UserError

# Sub-command modules, in the order `--help` lists them. A module that is not present is skipped.
COMMANDS = ["info", "vocab", "convert", "data", "train", "finetune", "evaluate", "sweep", "predict",
            "score", "export", "quantize", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilebert", description="Train, fine-tune, quantize and ship MobileBERT.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        modname = f"mobilebert.cli.{name}"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"mobilebert {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk (or quota, permissions) in a writer that does not map it itself
        from mobilebert.atomic import as_write_error

        err = as_write_error(e)
        if err is None:
            raise
        print(f"mobilebert {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobilebert {args.command}: interrupted", file=sys.stderr)
        return 130
