"""The `score` job: score a predictions file against a gold file and print the metrics as JSON.

SQuAD (paper §4.4, Table 5): the output is what the official `evaluate-v1.1.py` (`{"exact_match", "f1"}`,
one line) or `evaluate-v2.0.py` (exact, f1, total, HasAns_*, NoAns_*, and best_* with --na-probs;
indented) prints, so anyone can check a result with either tool. GLUE (paper §4.3, Table 4):
predictions are read in the GLUE submission format (`index<TAB>prediction`, label strings), every dev
example must have exactly one prediction, and they are scored by the task (`SentenceTask.score`, the
same scoring `evaluate` and `finetune` use). Nothing here needs torch.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from mobilebert.atomic import write_text
from mobilebert.errors import DataError, UserError, read_text
from mobilebert.tasks import metrics

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


def squad_command(dev: str, predictions: str, na_probs: str | None = None, na_prob_thresh: float = 1.0,
                  version: str = "auto", out: str | None = None) -> int:
    """`mobilebert score squad`: print the official script's JSON (one line for v1.1), optionally to --out."""
    from mobilebert.outpaths import check_out_file

    def warn(msg):
        print(msg, file=sys.stderr)

    if out:
        check_out_file(out, "--out")
    result, version = score_squad(dev, predictions, na_probs, na_prob_thresh, version, warn)
    text = json.dumps(result) if version == "1.1" else json.dumps(result, indent=2)
    print(text)
    if out:
        write_text(out, text + "\n")
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
    from mobilebert.tasks.sentence import SentenceTask

    spec = task_name if isinstance(task_name, TaskSpec) else get_task(task_name)
    task = SentenceTask(spec)
    gold = read_examples(spec, dev, split="dev", on_bad_row=on_bad_row)
    preds = read_predictions(spec, predictions)
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
    out = task.score(gold.examples, [task.label_id(preds[e.guid][0]) for e in gold.examples])
    if gold.skipped:
        out["skipped_rows"] = gold.skipped
    return out


def glue_command(task: str, dev: str, predictions: str, on_bad_row: str = "error", out: str | None = None) -> int:
    """`mobilebert score glue`: print the metrics JSON (dev-row warnings on stderr), optionally to --out."""
    import warnings

    from mobilebert.outpaths import check_out_file

    if out:
        check_out_file(out, "--out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = score_glue(task, dev, predictions, on_bad_row)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        write_text(out, text + "\n")
    return 0
