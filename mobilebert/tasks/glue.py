"""GLUE and user-defined sentence(-pair) tasks: registry, readers, bad-row policy, submission files.

The nine GLUE tasks are read from the folder layout written by GLUE's `download_glue_data.py`
(`CoLA/train.tsv`, `MNLI/dev_matched.tsv`, ...) or, on a machine that is online, from the Hugging
Face `glue` dataset (`mobilebert.tasks.hub`). Any CSV/TSV/JSONL classification or regression task is read by naming its
columns (`custom_task`). Every reader returns `Example`s that remember their file line, checks each
row (column count, label in the label set, non-empty text) and either stops at the first bad row
(`on_bad_row="error"`, a `DataError` naming file and line) or skips and counts bad rows
(`on_bad_row="skip"`, with a warning and the count in `ReadResult.skipped`): never a silent
wrong number. GLUE TSVs are read without quote handling (`QUOTE_NONE`), as GLUE's own code does:
MRPC, MNLI and QQP hold unbalanced `"` characters.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mobilebert.errors import DataError, UserError, not_utf8, open_text
from mobilebert.tasks.base import task_key

ON_BAD_ROW = ("error", "skip")
Column = str | int | None  # a header name, or a 0-based index for files without a header


@dataclass(frozen=True)
class TaskSpec:
    """How to read one task and score it."""

    name: str                              # canonical name, e.g. "SST-2"
    text_a: Column
    text_b: Column = None
    label: Column = "label"
    labels: tuple[str, ...] | None = None  # None: regression
    metrics: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    id_column: Column = None               # None: the guid is the 0-based row position
    header: bool = True                    # train/dev files have a header line
    n_columns: int | None = None           # expected column count when there is no header
    # Test files have their own columns (an index plus the texts); GLUE's always have a header.
    test_columns: tuple[Column, Column, Column] = ("index", None, None)
    test_header: bool = True
    dir_name: str = ""
    train_file: str = "train.tsv"
    dev_files: tuple[tuple[str, str], ...] = (("dev", "dev.tsv"),)
    test_files: tuple[tuple[str, str, str], ...] = ()   # (split, file, submission name)
    positive_label: str = "1"              # for F1
    hf_config: str | None = None
    score_range: tuple[float, float] | None = None   # regression: the scale gold scores must lie on

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("CoLA", text_a=3, label=1, labels=_BIN, metrics=("matthews_correlation",),
             main_metric="matthews_correlation", header=False, n_columns=4, test_columns=("index", "sentence", None),
             dir_name="CoLA", test_files=(("test", "test.tsv", "CoLA"),), hf_config="cola"),
    TaskSpec("SST-2", text_a="sentence", labels=_BIN, test_columns=("index", "sentence", None),
             dir_name="SST-2", test_files=(("test", "test.tsv", "SST-2"),), hf_config="sst2"),
    TaskSpec("MRPC", text_a="#1 String", text_b="#2 String", label="Quality", labels=_BIN,
             metrics=("accuracy", "f1"), main_metric="f1", test_columns=("index", "#1 String", "#2 String"),
             dir_name="MRPC", test_files=(("test", "test.tsv", "MRPC"),), hf_config="mrpc"),
    TaskSpec("STS-B", text_a="sentence1", text_b="sentence2", label="score", labels=None,
             metrics=("pearson", "spearmanr"), main_metric="spearmanr", id_column="index",
             test_columns=("index", "sentence1", "sentence2"), dir_name="STS-B",
             test_files=(("test", "test.tsv", "STS-B"),), hf_config="stsb", score_range=(0.0, 5.0)),
    TaskSpec("QQP", text_a="question1", text_b="question2", label="is_duplicate", labels=_BIN,
             metrics=("accuracy", "f1"), main_metric="f1", id_column="id",
             test_columns=("id", "question1", "question2"),
             dir_name="QQP", test_files=(("test", "test.tsv", "QQP"),), hf_config="qqp"),
    TaskSpec("MNLI", text_a="sentence1", text_b="sentence2", label="gold_label",
             labels=("contradiction", "entailment", "neutral"), id_column="index",
             test_columns=("index", "sentence1", "sentence2"), dir_name="MNLI",
             dev_files=(("dev_matched", "dev_matched.tsv"), ("dev_mismatched", "dev_mismatched.tsv")),
             test_files=(("test_matched", "test_matched.tsv", "MNLI-m"),
                         ("test_mismatched", "test_mismatched.tsv", "MNLI-mm")), hf_config="mnli"),
    TaskSpec("QNLI", text_a="question", text_b="sentence", labels=_NLI2, id_column="index",
             test_columns=("index", "question", "sentence"), dir_name="QNLI",
             test_files=(("test", "test.tsv", "QNLI"),), hf_config="qnli"),
    TaskSpec("RTE", text_a="sentence1", text_b="sentence2", labels=_NLI2, id_column="index",
             test_columns=("index", "sentence1", "sentence2"), dir_name="RTE",
             test_files=(("test", "test.tsv", "RTE"),), hf_config="rte"),
    TaskSpec("WNLI", text_a="sentence1", text_b="sentence2", labels=_BIN, id_column="index",
             test_columns=("index", "sentence1", "sentence2"), dir_name="WNLI",
             test_files=(("test", "test.tsv", "WNLI"),), hf_config="wnli"),
]}


_ALIASES = {task_key(n): n for n in GLUE_TASKS}
_ALIASES.update({"mnlim": "MNLI", "mnlimm": "MNLI", "mnlimatched": "MNLI", "mnlimismatched": "MNLI"})


def get_task(name: str) -> TaskSpec:
    """Look a GLUE task up by any usual spelling (sst2, SST-2, sts_b, mnli-mm, ...)."""
    try:
        return GLUE_TASKS[_ALIASES[task_key(name)]]
    except KeyError:
        raise UserError(f"unknown GLUE task {name!r}: choose one of {', '.join(GLUE_TASKS)}") from None


def custom_task(name: str, text_a: Column, text_b: Column = None, label: Column = "label",
                labels: list[str] | tuple[str, ...] | None = None, regression: bool = False,
                id_column: Column = None, header: bool = True, metrics: tuple[str, ...] | None = None,
                train_path: str | Path | None = None, on_bad_row: str = "error") -> TaskSpec:
    """A task from your own CSV/TSV/JSONL file, described by its column names (or indices without a header).

    A classification task without `labels` takes the sorted label set of `train_path`.
    """
    if regression and labels:
        raise UserError(f"task {name}: a regression task has no label list")
    if not regression and labels is None:
        if train_path is None:
            raise UserError(f"task {name}: give the label list or a training file to read it from")
        labels = scan_labels(train_path, label, header, on_bad_row)
    if not regression and len(labels) < 2:
        raise UserError(f"task {name}: a classification task needs at least 2 labels, got {list(labels)}")
    labels = None if regression else tuple(str(x) for x in labels)
    if labels is not None and len(set(labels)) != len(labels):
        # Two classes with one name: rows of the second would be trained and scored as the first.
        dup = next(x for x in labels if labels.count(x) > 1)
        raise UserError(f"task {name}: label {dup!r} is listed twice in {list(labels)}")
    if metrics is None:
        metrics = ("pearson", "spearmanr") if regression else ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)
    return TaskSpec(name=name, text_a=text_a, text_b=text_b, label=label, labels=labels, metrics=tuple(metrics),
                    main_metric="spearmanr" if regression else "accuracy", id_column=id_column, header=header,
                    test_columns=(id_column, text_a, text_b), test_header=header,
                    # F1 is for the second label of a binary task ("1" of 0/1, "pos" of neg/pos, ...).
                    positive_label=labels[1] if labels and len(labels) == 2 else "1")


@dataclass
class Example:
    guid: str
    text_a: str
    text_b: str | None
    label: str | float | None   # a label string, a float for regression, None when unlabeled
    line_no: int                # 1-based line in the source file (0 for non-file sources)


@dataclass
class ReadResult:
    examples: list[Example]
    path: str
    skipped: int = 0
    problems: list[str] = field(default_factory=list)   # the first few bad-row messages


class _BadRows:
    """Applies the bad-row policy: raise at once, or count and remember the first messages."""

    def __init__(self, path: str, policy: str):
        if policy not in ON_BAD_ROW:
            raise UserError(f"on_bad_row={policy!r}: choose error or skip")
        self.path, self.policy, self.count, self.first = path, policy, 0, []

    def __call__(self, line_no: int, msg: str) -> None:
        where = f"{self.path}:{line_no}: {msg}" if line_no else f"{self.path}: {msg}"
        if self.policy == "error":
            raise DataError(where + " (set on_bad_row=skip to skip such rows)")
        self.count += 1
        if len(self.first) < 5:
            self.first.append(where)

    def finish(self, examples: list[Example], allow_empty: bool = False) -> ReadResult:
        if not examples and not allow_empty:
            raise DataError(f"{self.path}: no usable rows" + (f" ({self.first[0]})" if self.first else ""))
        if self.count:
            warnings.warn(f"{self.path}: skipped {self.count} bad row(s); first: {self.first[0]}", stacklevel=3)
        return ReadResult(examples, self.path, self.count, self.first)


def _file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv" if suffix == ".csv" else "tsv"


def _rows(path: Path, fmt: str):
    """Yield (line_no, fields) for every non-blank record. utf-8-sig drops MRPC's byte-order mark."""
    with open_text(path, newline="") as fh:
        try:
            if fmt == "csv":
                reader = csv.reader(fh)
                start = 1
                for row in reader:
                    if row:
                        yield start, row
                    start = reader.line_num + 1  # quoted fields may span lines
            else:
                for i, line in enumerate(fh, 1):
                    line = line.rstrip("\r\n")
                    if line.strip():
                        yield i, line.split("\t")
        except UnicodeDecodeError as e:
            raise not_utf8(path, e) from None
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def _index(col: Column, header: list[str] | None, path: Path, role: str) -> int | None:
    if col is None:
        return None
    if isinstance(col, int):
        return col
    if header is None:
        raise UserError(f"{path}: column {col!r} ({role}) given by name but the file has no header")
    if col not in header:
        raise DataError(f"{path}:1: no column {col!r} ({role}); the header has {', '.join(header)}")
    return header.index(col)


def _parse_label(task: TaskSpec, raw, line_no: int, bad) -> tuple[bool, str | float | None]:
    if task.is_regression:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            bad(line_no, f"score {raw!r} is not a number")
            return False, None
        if not math.isfinite(value):
            bad(line_no, f"score {raw!r} is not finite")
            return False, None
        if task.score_range is not None and not task.score_range[0] <= value <= task.score_range[1]:
            lo, hi = task.score_range
            bad(line_no, f"score {raw!r} is outside {task.name}'s {lo:g}-{hi:g} scale")
            return False, None
        return True, value
    label = str(raw).strip() if not isinstance(raw, bool) else str(int(raw))
    if label not in task.labels:
        bad(line_no, f"label {label!r} is not one of {', '.join(task.labels)}")
        return False, None
    return True, label


def read_examples(task: TaskSpec, path: str | Path, split: str = "train", on_bad_row: str = "error") -> ReadResult:
    """Read a train/dev (labeled) or test (`split` starting with "test": unlabeled) file of `task`."""
    path = Path(path)
    bad = _BadRows(str(path), on_bad_row)
    fmt = _file_format(path)
    if split.startswith("test"):
        (id_col, a_col, b_col), lab_col, has_header = task.test_columns, None, task.test_header
    else:
        id_col, a_col, b_col, lab_col, has_header = task.id_column, task.text_a, task.text_b, task.label, task.header
    cols = (id_col, a_col, b_col, lab_col)
    rows, idx, expected = _rows(path, fmt), cols, task.n_columns
    if fmt != "jsonl":
        header = None
        if has_header:
            first = next(rows, None)
            if first is None:
                raise DataError(f"{path}: empty file")
            header = [h.strip() for h in first[1]]
            expected = len(header)
        idx = [_index(c, header, path, r) for c, r in zip(cols, ("id", "text_a", "text_b", "label"))]
    examples: list[Example] = []
    for position, (line_no, row) in enumerate(rows):
        if fmt == "jsonl":
            try:
                row = json.loads("\t".join(row))
            except json.JSONDecodeError as e:
                bad(line_no, f"malformed JSON ({e.msg}, column {e.colno})")
                continue
            if not isinstance(row, dict):
                bad(line_no, "expected a JSON object")
                continue
            missing = [c for c in cols[1:] if c is not None and c not in row]
            if missing:
                bad(line_no, f"no key {missing[0]!r}")
                continue
        elif expected is not None and len(row) != expected:
            bad(line_no, f"has {len(row)} columns, expected {expected}")
            continue
        elif max(i for i in idx if i is not None) >= len(row):
            bad(line_no, f"has {len(row)} columns, too few for the named columns")
            continue
        i_id, i_a, i_b, i_lab = idx
        text_a, text_b = row[i_a], (row[i_b] if i_b is not None else None)
        if not isinstance(text_a, str) or not text_a.strip() or (i_b is not None and (
                not isinstance(text_b, str) or not text_b.strip())):
            bad(line_no, "empty text")
            continue
        label = None
        if i_lab is not None:
            ok, label = _parse_label(task, row[i_lab], line_no, bad)
            if not ok:
                continue
        has_id = i_id is not None and (fmt != "jsonl" or i_id in row)
        examples.append(Example(str(row[i_id]).strip() if has_id else str(position), text_a, text_b, label, line_no))
    return bad.finish(examples)


def infer_labels(examples_raw_labels) -> tuple[str, ...]:
    """The sorted label set of a custom task's training labels (numerically when all are integers)."""
    values = sorted({str(x) for x in examples_raw_labels})
    try:
        return tuple(sorted(values, key=int))
    except ValueError:
        return tuple(values)


def scan_labels(path: str | Path, label: Column, header: bool = True, on_bad_row: str = "error") -> tuple[str, ...]:
    """Collect a custom file's label set (for tasks whose label list was not given).

    A JSONL line that is not a JSON object holding the label key follows `on_bad_row`: an error naming the
    file and line, or skipped here (and counted when the file is read for real)."""
    path, seen, hdr = Path(path), [], None
    jsonl = _file_format(path) == "jsonl"
    first_bad = None
    for line_no, row in _rows(path, "tsv" if jsonl else _file_format(path)):
        if jsonl:
            try:
                obj = json.loads("\t".join(row))
            except json.JSONDecodeError as e:
                problem = f"{path}:{line_no}: malformed JSON ({e.msg}, column {e.colno})"
            else:
                if not isinstance(obj, dict):
                    problem = f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}"
                elif label not in obj or obj[label] is None or isinstance(obj[label], (dict, list)):
                    problem = f"{path}:{line_no}: no label under key {label!r}"
                else:
                    seen.append(obj[label] if not isinstance(obj[label], bool) else int(obj[label]))
                    continue
            if on_bad_row == "error":
                raise DataError(problem + " (set on_bad_row=skip to skip such rows)")
            first_bad = first_bad or problem
        elif header and hdr is None:
            hdr = [h.strip() for h in row]
        elif hdr is None or len(row) == len(hdr):   # malformed rows are reported by the real read
            i = _index(label, hdr, path, "label") if header else label
            if i < len(row) and row[i].strip():
                seen.append(row[i].strip())
    if not seen:
        raise DataError(f"{path}: no labels found in column {label!r}" + (f" ({first_bad})" if first_bad else ""))
    labels = infer_labels(seen)
    if len(labels) < 2 and first_bad:
        raise DataError(f"{path}: only the label {labels[0]!r} in the rows that could be read; first bad row: "
                        f"{first_bad}")
    return labels


def task_file(task: TaskSpec, data_dir: str | Path, split: str) -> Path:
    """The file of `split` (train, dev, dev_matched, test, ...) under a GLUE root or the task's own folder."""
    names = {"train": task.train_file, **dict(task.dev_files), **{s: f for s, f, _ in task.test_files}}
    if split == "dev" and "dev" not in names:
        split = task.dev_files[0][0]
    if split not in names:
        raise UserError(f"{task.name} has no split {split!r}: choose one of {', '.join(names)}")
    root = Path(data_dir)
    for folder in (root / task.dir_name, root):
        if (folder / names[split]).is_file():
            return folder / names[split]
    raise DataError(f"{root / task.dir_name / names[split]}: file not found "
                    "(expected the download_glue_data.py layout)")


def write_submission(task: TaskSpec, guids: list[str], predictions: list, out_dir: str | Path,
                     submission_name: str | None = None) -> Path:
    """Write `NAME.tsv` with `index<TAB>prediction` lines; class ids are written as label strings."""
    if len(guids) != len(predictions):
        raise ValueError(f"{len(guids)} ids but {len(predictions)} predictions")
    name = submission_name or (task.test_files[0][2] if task.test_files else task.name)
    out = Path(out_dir) / f"{name}.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["index\tprediction"]
    for guid, pred in zip(guids, predictions):
        if task.is_regression:
            lines.append(f"{guid}\t{float(pred)!r}")  # exact round trip: re-scoring gives the same number
        else:
            lines.append(f"{guid}\t{task.labels[int(pred)] if not isinstance(pred, str) else pred}")
    from mobilebert import atomic

    return atomic.write_text(out, "\n".join(lines) + "\n")
