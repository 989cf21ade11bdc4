"""`mobilebert evaluate CHECKPOINT [key=value ...] [--out DIR] [--test]`: score a fine-tuned checkpoint on
its task's dev set(s) with the exact GLUE/SQuAD metrics and print them as JSON.

The task and data settings come from the checkpoint's own `settings.yaml` (written by `finetune`);
`key=value` overrides change them, e.g. `data.dir=glue_data` on another machine or
`data.dev_file=other.tsv`. A checkpoint whose head does not fit the task (another label count or
label order) is refused. With --out, dev predictions (GLUE submission format or SQuAD predictions
JSON, which `mobilebert score` re-checks) are written there; --test also writes test predictions.
"""

import argparse

from mobilebert.atomic import write_text


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a fine-tuned checkpoint on its dev set (prints JSON)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a fine-tuned checkpoint folder (for example RUN/best)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides, e.g. data.dir=glue_data")
    p.add_argument("--out", help="write dev (and with --test, test) predictions to this folder")
    p.add_argument("--test", action="store_true", help="also predict the test split(s)")
    p.set_defaults(func=run)


def checkpoint_settings(checkpoint: str, overrides: list[str]):
    """The checkpoint's resolved settings (if any) + overrides, with model.init pointing at the checkpoint."""
    from pathlib import Path

    from mobilebert.errors import CheckpointError
    from mobilebert.recipes.finetune_settings import FinetuneSettings
    from mobilebert.recipes.settings import load_settings

    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a checkpoint folder (no config.json)")
    saved = folder / "settings.yaml"
    return load_settings(FinetuneSettings, saved if saved.is_file() else None,
                         list(overrides) + [f"model.init={folder}", "model.tokenizer=null", "distill.teacher=null"])


def run(args: argparse.Namespace) -> int:
    import json

    from mobilebert.checkpoint import load_config
    from mobilebert.errors import ConfigError
    from mobilebert.recipes.settings import pick_device, pick_precision
    from mobilebert.outpaths import check_out_dir
    from mobilebert.tasks import build_task_data, load_model_for_task, load_tokenizer

    if args.test and not args.out:
        raise ConfigError("--test writes test predictions: give --out DIR as well")
    out = check_out_dir(args.out, "--out") if args.out else None
    for sub in ("dev", "test") if out is not None else ():
        check_out_dir(out / sub, "--out")
    s = checkpoint_settings(args.checkpoint, args.overrides)
    cfg = load_config(args.checkpoint)
    if s.data.task == "custom" and s.data.labels is None and cfg.id2label and not s.data.regression:
        s.data.labels = list(cfg.id2label.values())   # the label order the head was trained with
    tokenizer = load_tokenizer(s.model)
    data = build_task_data(s.data, tokenizer, s.train.seed, splits=("dev", "test") if args.test else ("dev",))
    if not data.dev:
        raise ConfigError("data: no dev file to evaluate on (set data.dir or data.dev_file)")
    device = pick_device(s.train.device)
    precision = pick_precision(s.train.precision, device)
    model = load_model_for_task(args.checkpoint, data, tokenizer, fine_tuned=True).to(device)
    result = data.evaluate(model, s, device, precision, out / "dev" if out else None)
    metrics = {"task": data.name, "checkpoint": str(args.checkpoint), **result["metrics"]}
    if any(data.skipped.values()):
        metrics["skipped_rows"] = data.skipped
    if args.test and out is not None and data.test:
        metrics["test_files"] = [str(p) for p in data.predict_test(model, s, device, precision, out / "test")]
    text = json.dumps(metrics, indent=2)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "eval_results.json", text + "\n")
    return 0
