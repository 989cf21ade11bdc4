"""`SentenceTask`: the `Task` of GLUE and custom sentence(-pair) classification or regression (paper §4.3).

Examples (`mobilebert.tasks.glue.Example`) become `[CLS] a [SEP] (b [SEP])` features cut to
max_seq_length (longest first, as run_classifier.py); the classifier's logits become class ids (argmax)
or scores (regression); predictions are scored with the task's GLUE metrics (F1 for its positive
class) and written as GLUE submission files (`index<TAB>prediction`). `custom_spec` turns the data
settings of a custom TSV/CSV/JSONL task into its `TaskSpec`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilebert.errors import ConfigError
from mobilebert.tasks import metrics as M
from mobilebert.tasks.base import GLUE_SEQ, Split, Task, positive_index
from mobilebert.tasks.glue import Example, TaskSpec, custom_task, write_submission


class SentenceTask(Task):
    kind, head, arch = "glue", "classifier", "ForSequenceClassification"
    max_seq_length = GLUE_SEQ
    target_keys, output_keys = ("labels",), ("logits",)

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.name = spec.name
        self.main_metric = spec.main_metric
        self.is_regression = spec.is_regression

    @property
    def positive(self) -> int | None:
        """Index of the class F1 is reported for (None for regression)."""
        return None if self.is_regression else positive_index(self.spec.labels, self.spec.positive_label)

    def head_config(self) -> dict:
        if self.is_regression:
            return {"num_labels": 1, "problem_type": "regression"}
        return {"num_labels": len(self.spec.labels), "id2label": dict(enumerate(self.spec.labels)),
                "problem_type": "single_label_classification"}

    def label_id(self, label):
        """A gold label as the model's target: a class index, or the score itself for regression."""
        return label if self.is_regression else self.spec.labels.index(label)

    def features(self, examples: list[Example], tokenizer, max_seq_length: int | None = None,
                 training: bool = False) -> list[dict]:
        pairs = None if self.spec.text_b is None else [e.text_b for e in examples]
        encs = tokenizer.encode_batch([e.text_a for e in examples], pairs, max_length=max_seq_length or GLUE_SEQ,
                                      truncation="longest_first")
        return [{"input_ids": enc.input_ids, "token_type_ids": enc.token_type_ids,
                 "label": None if e.label is None else self.label_id(e.label)} for e, enc in zip(examples, encs)]

    def outputs(self, model_output, lengths: list[int]) -> list:
        logits = model_output.logits.float().cpu().numpy()   # (B, num_labels)
        return list(logits)

    def answers(self, examples, features, outputs) -> list[dict]:
        logits = np.stack(outputs)
        if self.is_regression:
            return [{"score": float(x)} for x in logits[:, 0]]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return [{"label": self.spec.labels[int(p.argmax())], "probability": float(p.max())} for p in probs]

    def predict(self, examples, features, outputs) -> np.ndarray:
        """Logits (N, L) -> class ids (argmax) or scores (regression)."""
        logits = np.stack(outputs)
        return logits[:, 0] if self.is_regression else logits.argmax(-1)

    def metrics(self, predictions, gold, names: tuple[str, ...] | None = None) -> dict:
        """Raw GLUE metrics (`names`, default the task's) of class ids or scores against gold ids or scores."""
        return M.glue_metrics(names or self.spec.metrics, predictions, gold, self.positive)

    def score(self, gold: list[Example], predictions) -> dict:
        y = [self.label_id(e.label) for e in gold]
        out = self.metrics(list(predictions), y)
        return {**{k: M.finite_or_none(v) for k, v in out.items()}, "total": len(gold)}

    def write(self, split: Split, predictions, out_dir: Path, name: str, dev: bool = True) -> list[Path]:
        return [write_submission(self.spec, [e.guid for e in split.examples], list(predictions), out_dir, name)]


def _col(value, header: bool):
    """Custom-task columns from settings are strings; without a header they are 0-based indices."""
    if value is None or header:
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"data: column {value!r} must be a 0-based index when data.header=false") from None


def custom_spec(ds) -> TaskSpec:
    """The `TaskSpec` of a custom task from the data settings (columns, labels, header, files)."""
    if not ds.text_a:
        raise ConfigError("data.text_a: a custom task needs its text column (and data.label, data.train_file)")
    if ds.labels is not None and len({str(x) for x in ds.labels}) != len(ds.labels):
        raise ConfigError(f"data.labels: {list(ds.labels)} lists a label twice; give each class once")
    return custom_task("custom", _col(ds.text_a, ds.header), _col(ds.text_b, ds.header), _col(ds.label, ds.header),
                       labels=ds.labels, regression=ds.regression, id_column=_col(ds.id_column, ds.header),
                       header=ds.header, train_path=ds.train_file or ds.dev_file, on_bad_row=ds.on_bad_row)
