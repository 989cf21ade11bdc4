"""`mobilebert score`: score a predictions file against a gold file and print the metrics as JSON.

    mobilebert score squad DEV.json PREDICTIONS.json [--na-probs NA.json] [--na-prob-thresh 1.0]
    mobilebert score glue TASK DEV.tsv PREDICTIONS.tsv [--on-bad-row error|skip]

SQuAD output is what the official `evaluate-v1.1.py` (`{"exact_match", "f1"}`, one line) or
`evaluate-v2.0.py` (exact, f1, total, HasAns_*, NoAns_*, and best_* with --na-probs; indented)
prints, so anyone can check a result with either tool. GLUE predictions are read in the GLUE
submission format (`index<TAB>prediction`, label strings) and every dev example must have exactly
one prediction. Nothing here needs torch.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from mobilebert.tasks import metrics
from mobilebert.atomic import write_text
from mobilebert.errors import DataError, UserError, read_text


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("score", help="score a predictions file (SQuAD or GLUE) and print the metrics as JSON",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="{squad,glue}")
    sq = sub.add_parser("squad", help="official SQuAD v1.1 / v2.0 EM and F1")
    sq.add_argument("dev", help="SQuAD dev JSON (v1.1 or v2.0)")
    sq.add_argument("predictions", help="predictions JSON: {question id: answer text}")
    sq.add_argument("--na-probs", help="v2.0: JSON {question id: no-answer probability or null-odds}")
    sq.add_argument("--na-prob-thresh", type=float, default=1.0,
                    help="v2.0: predict no-answer when na-prob exceeds this (official default 1.0)")
    sq.add_argument("--version", choices=["auto", "1.1", "2.0"], default="auto",
                    help="scoring rules; auto reads the dev file's version and questions")
    sq.add_argument("--out", help="also write the metrics JSON here")
    sq.set_defaults(func=_run_squad)
    gl = sub.add_parser("glue", help="GLUE metrics for a task's dev file")
    gl.add_argument("task", help="CoLA, SST-2, MRPC, STS-B, QQP, MNLI (-m/-mm), QNLI, RTE or WNLI")
    gl.add_argument("dev", help="the task's labeled dev TSV")
    gl.add_argument("predictions", help="index<TAB>prediction TSV (GLUE submission format)")
    gl.add_argument("--on-bad-row", choices=["error", "skip"], default="error",
                    help="malformed dev rows: stop (default) or count and skip them")
    gl.add_argument("--out", help="also write the metrics JSON here")
    gl.set_defaults(func=_run_glue)


# ------------------------------------------------------------------------------------ SQuAD


def _json_map(path: str, value_type, what: str) -> dict:
    from mobilebert.tasks.squad import load_json

    obj = load_json(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}:1: expected a JSON object {{question id: {what}}}")
    for k, v in obj.items():
        if not isinstance(v, value_type) or isinstance(v, bool):
            raise DataError(f"{path}: question {k}: expected {what}, got {v!r}")
    return obj


def score_squad(dev: str, predictions: str, na_probs: str | None = None, na_prob_thresh: float = 1.0,
                version: str = "auto", warn=None) -> tuple[dict, str]:
    """Returns (metrics, version). v1.1 counts unanswered questions as 0 (through `warn`), as the
    official script does; v2.0 needs a prediction for every question."""
    from mobilebert.tasks.squad import check_gold_ids, load_json

    dev_json = load_json(dev)
    if not isinstance(dev_json, dict) or not isinstance(dev_json.get("data"), list):
        raise DataError(f"{dev}:1: expected a SQuAD object with a \"data\" list")
    check_gold_ids(dev, dev_json)
    preds = _json_map(predictions, str, "an answer string")
    probs = _json_map(na_probs, (int, float), "a number") if na_probs else None
    if version == "auto":
        version = "2.0" if metrics.is_v2_dataset(dev_json) or na_probs else "1.1"
    if version == "1.1" and na_probs:
        raise UserError("--na-probs is for SQuAD v2.0 scoring (add --version 2.0)")
    unknown = [k for k in preds if k not in {qa.get("id") for a in dev_json["data"] for p in a.get("paragraphs", [])
                                              for qa in p.get("qas", [])}]
    if unknown and warn is not None:
        warn(f"{predictions}: {len(unknown)} predictions for questions not in {dev} (first: {unknown[0]}); ignored")
    try:
        if version == "1.1":
            return metrics.squad_v1_evaluate(dev_json["data"], preds, warn=warn), version
        return metrics.squad_v2_evaluate(dev_json["data"], preds, probs, na_prob_thresh), version
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{dev}: not in SQuAD format (missing or bad field {e})") from None
    except ValueError as e:
        raise DataError(f"{dev} / {predictions}: {e}") from None


def _run_squad(args) -> int:
    from mobilebert.outpaths import check_out_file

    def warn(msg):
        print(msg, file=sys.stderr)

    if args.out:
        check_out_file(args.out, "--out")
    out, version = score_squad(args.dev, args.predictions, args.na_probs, args.na_prob_thresh, args.version, warn)
    text = json.dumps(out) if version == "1.1" else json.dumps(out, indent=2)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0


# ------------------------------------------------------------------------------------ GLUE


def read_predictions(task, path: str | Path) -> dict[str, tuple[str | float, int]]:
    """`index<TAB>prediction` rows (header optional) -> {index: (prediction, line)}; any bad row is an error."""
    path = Path(path)
    lines = read_text(path).splitlines()
    out: dict[str, tuple[str | float, int]] = {}
    for line_no, line in enumerate(lines, 1):
        if not line.strip() or (line_no == 1 and line.strip().lower().split("\t") == ["index", "prediction"]):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{line_no}: has {len(fields)} columns, expected 2 (index, prediction)")
        index, raw = fields[0].strip(), fields[1].strip()
        if index in out:
            raise DataError(f"{path}:{line_no}: index {index} already predicted on line {out[index][1]}")
        if task.is_regression:
            try:
                value: str | float = float(raw)
            except ValueError:
                raise DataError(f"{path}:{line_no}: prediction {raw!r} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{path}:{line_no}: prediction {raw!r} is not a finite number")
        else:
            if raw not in task.labels:
                raise DataError(f"{path}:{line_no}: prediction {raw!r} is not one of {', '.join(task.labels)}")
            value = raw
        out[index] = (value, line_no)
    if not out:
        raise DataError(f"{path}: no predictions")
    return out


def score_glue(task_name, dev: str, predictions: str, on_bad_row: str = "error") -> dict:
    """GLUE metrics of a predictions file against a labeled dev file (matched by index)."""
    from mobilebert.tasks.glue import TaskSpec, get_task, read_examples

    task = task_name if isinstance(task_name, TaskSpec) else get_task(task_name)
    gold = read_examples(task, dev, split="dev", on_bad_row=on_bad_row)
    preds = read_predictions(task, predictions)
    missing = [e for e in gold.examples if e.guid not in preds]
    if missing:
        e = missing[0]
        raise DataError(f"{predictions}: {len(missing)} of {len(gold.examples)} dev examples have no prediction "
                        f"(first: index {e.guid}, {dev}:{e.line_no})")
    known = {e.guid for e in gold.examples}
    extra = [k for k in preds if k not in known]
    # With skipped dev rows, their predictions are expected leftovers; otherwise an extra index is a mismatch.
    if extra and not gold.skipped:
        raise DataError(f"{predictions}:{preds[extra[0]][1]}: index {extra[0]} is not in {dev}")
    if task.is_regression:
        y = [e.label for e in gold.examples]
        p = [preds[e.guid][0] for e in gold.examples]
        positive = None
    else:
        ids = {lab: i for i, lab in enumerate(task.labels)}
        y = [ids[e.label] for e in gold.examples]
        p = [ids[preds[e.guid][0]] for e in gold.examples]
        positive = ids.get(task.positive_label, 1)
    out = {k: metrics.finite_or_none(v) for k, v in metrics.glue_metrics(task.metrics, p, y, positive).items()}
    out["total"] = len(gold.examples)
    if gold.skipped:
        out["skipped_rows"] = gold.skipped
    return out


def _run_glue(args) -> int:
    import warnings

    from mobilebert.outpaths import check_out_file

    if args.out:
        check_out_file(args.out, "--out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = score_glue(args.task, args.dev, args.predictions, args.on_bad_row)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0
