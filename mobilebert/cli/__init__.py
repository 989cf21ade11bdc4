"""The `mobilebert` command: one sub-command per job, each in its own module under `mobilebert.cli`.

Each module exposes `add_parser(subparsers)` and sets `func` on its parser; `func` only turns the parsed
arguments into one call: a recipe (mobilebert.recipes) for the jobs, one function of their layer for the light
commands (info: mobilebert.info.describe, vocab: tokenizer.train_vocab, data: data.console, export:
export.from_checkpoint). Modules import torch and friends inside `func`, so `mobilebert --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from mobilebert.errors import UserError

# Sub-command modules, in the order `--help` lists them. A module that is not present is skipped.
COMMANDS = ["info", "vocab", "data", "train", "finetune", "evaluate", "sweep", "predict",
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


def _sigterm_handler(pid: int):
    """SIGTERM stops a command the way Ctrl-C does (KeyboardInterrupt: `finally` blocks clean up, exit 130),
    in set-up too; the training loop installs its own graceful handler while it runs. Worker processes forked
    from this one keep the default action."""
    def handle(signum, frame):
        if os.getpid() != pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt
    return handle


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _sigterm_handler(os.getpid()))
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
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
