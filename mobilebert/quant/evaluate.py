"""fp32 vs int8 on a task's dev set, side by side, with an accuracy-drop gate (paper Table 6).

Paper §3.3, Table 6: post-training 8-bit quantization of MobileBERT costs at most 0.5 point on GLUE
dev (SST-2 92.1 -> 91.9). Peers report collapses instead (tensorflow#44306: 90% -> 49%), so a quantized
model is never shipped on faith: `compare` scores the fp32 and the int8 model on the same dev
examples, reports both metrics, their difference in points and the argmax agreement, and `gate`
refuses (or only warns, by choice) when the drop passes a threshold.

This module also reads the task data the quantizers need (calibration samples from the training file,
the dev set for the comparison) and checks that the data belong to the model's task: a checkpoint
fine-tuned on one task (its `task.json`, its label count) refused data read as another.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilebert.errors import UserError


class AccuracyDropError(UserError):
    """The int8 model lost more than the allowed accuracy; nothing was written."""


@dataclass
class TaskSample:
    """Examples of one split of a task, tokenized (`SentenceTask.features`); labels as class indices."""

    task: object  # mobilebert.tasks.sentence.SentenceTask
    path: str
    features: list = field(default_factory=list)
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)

    def batches(self, batch_size: int = 32):
        """Padded (input_ids, attention_mask, token_type_ids) int64 arrays, in file order."""
        for i in range(0, len(self.features), batch_size):
            chunk = [f["input_ids"] for f in self.features[i:i + batch_size]]
            types = [f["token_type_ids"] for f in self.features[i:i + batch_size]]
            width = max(len(ids) for ids in chunk)
            pad = lambda seq: list(seq) + [0] * (width - len(seq))
            yield (np.array([pad(ids) for ids in chunk], dtype=np.int64),
                   np.array([pad([1] * len(ids)) for ids in chunk], dtype=np.int64),
                   np.array([pad(t) for t in types], dtype=np.int64))


def check_task(model_dir, config, task) -> None:
    """Refuse data of another task: the checkpoint's task.json, label count and label names must agree."""
    from mobilebert.tasks.base import task_key
    from mobilebert.tasks.sentence import SentenceTask

    info_path = Path(model_dir) / "task.json" if model_dir is not None else None
    if info_path is not None and info_path.is_file():
        trained = json.loads(info_path.read_text(encoding="utf-8")).get("task")
        if trained and task_key(trained) != task_key(task.name):
            raise UserError(f"--task {task.name}: the model in {model_dir} was fine-tuned on {trained} "
                            f"(its task.json); calibration and evaluation data must come from {trained}")
    bad = SentenceTask(task).head_mismatch(config, generic_names_ok=True)
    if bad is not None and bad.what == "count":
        raise UserError(f"--task {task.name}: the task has {bad.want} labels but the model's classifier "
                        f"has {bad.have}; the data are from a different task than the model")
    if bad is not None:
        raise UserError(f"--task {task.name}: the model's labels {bad.have} differ from the task's {bad.want}")


def load_split(task_name: str, data: str | Path, split: str, tokenizer, max_seq_length: int = 128,
               limit: int = 0, seed: int = 0) -> TaskSample:
    """Read `split` of a GLUE task from a GLUE root / task folder, or an explicit file, and tokenize it.

    limit > 0 takes a seeded random subset (calibration) for train, the first `limit` rows otherwise."""
    from mobilebert.tasks.glue import get_task, read_examples, task_file
    from mobilebert.tasks.sentence import SentenceTask

    task = SentenceTask(get_task(task_name))
    p = Path(data)
    if not p.exists():
        raise UserError(f"{p}: no such data file or folder")
    path = task_file(task.spec, p, split) if p.is_dir() else p
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped-row warnings: the count is in the result
        examples = read_examples(task.spec, path, split="dev" if split == "test" else split,
                                 on_bad_row="skip").examples
    if not examples:
        raise UserError(f"{path}: no usable {task.name} examples")
    if limit and len(examples) > limit:
        examples = random.Random(seed).sample(examples, limit) if split == "train" else examples[:limit]
    feats = task.features(examples, tokenizer, max_seq_length)
    labels = np.array([f["label"] for f in feats]) if examples[0].label is not None else None
    return TaskSample(task=task, path=str(path), features=feats, labels=labels)


def run_logits(fn, sample: TaskSample, batch_size: int = 32) -> np.ndarray:
    """Concatenated logits of `fn(ids, mask, types) -> (B, num_labels) array` over the sample."""
    return np.concatenate([np.asarray(fn(*b), dtype=np.float32) for b in sample.batches(batch_size)])


def torch_logits_fn(model):
    """A PyTorch classifier as `fn(ids, mask, types) -> numpy logits`."""
    import torch

    model.eval()

    def fn(ids, mask, types):
        with torch.no_grad():
            return model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         token_type_ids=torch.from_numpy(types)).logits.float().numpy()
    return fn


def session_logits_fn(session):
    return lambda ids, mask, types: session(ids, mask, types)["logits"]


@dataclass
class QuantReport:
    task: str
    metric: str
    n: int
    fp32: float
    int8: float
    agreement: float | None  # fraction of dev examples with the same predicted class (None: a regression task)
    mean_abs_diff: float = 0.0  # mean |int8 - fp32| over every output value (logits, or regression scores)
    largest: float = 0.0  # the largest |fp32| output value, the scale of mean_abs_diff

    @property
    def drop(self) -> float:
        """fp32 minus int8, in points (percent)."""
        return 100.0 * (self.fp32 - self.int8)

    def table(self, method: str = "int8") -> str:
        rows = [f"| {self.task} dev ({self.n} examples) | {self.metric} |", "|---|---|",
                f"| fp32 | {100 * self.fp32:.2f} |", f"| {method} | {100 * self.int8:.2f} |",
                f"| drop (points) | {self.drop:+.2f} |"]
        if self.agreement is not None:
            rows.append(f"| argmax agreement | {100 * self.agreement:.2f}% |")
        rel = f" ({100 * self.mean_abs_diff / self.largest:.2f}% of the largest)" if self.largest else ""
        return "\n".join(rows + [f"| mean output difference | {self.mean_abs_diff:.4f}{rel} |"])


def compare(sample: TaskSample, fp32_logits: np.ndarray, int8_logits: np.ndarray) -> QuantReport:
    """The task's main metric of both models' outputs on `sample`: classes by argmax, a regression task's scores as
    they are (STS-B: Spearman x 100 points); plus argmax agreement (classes) and the mean output difference."""
    if sample.labels is None:
        raise UserError(f"{sample.path}: the evaluation split has no labels")
    task = sample.task
    metric = task.main_metric
    if task.is_regression:
        a, b, agreement = fp32_logits[:, 0], int8_logits[:, 0], None
    else:
        a, b = fp32_logits.argmax(-1), int8_logits.argmax(-1)
        agreement = float((a == b).mean())
    m32 = task.metrics(a, sample.labels, (metric,))[metric]
    m8 = task.metrics(b, sample.labels, (metric,))[metric]
    diff = float(np.abs(int8_logits.astype(np.float64) - fp32_logits).mean())
    return QuantReport(task.name, metric, len(sample), float(m32), float(m8), agreement, diff,
                       float(np.abs(fp32_logits).max(initial=0.0)))


def gate(report: QuantReport, max_drop: float, warn_only: bool = False, what: str = "int8 model",
         hint: str = "") -> str | None:
    """Raise AccuracyDropError when the drop exceeds `max_drop` points; with warn_only, return a warning.
    `hint` (a remedy, "; ..." ) is added to the message."""
    if report.drop <= max_drop:
        return None
    msg = (f"{what} loses {report.drop:.2f} points of {report.metric} on {report.task} dev "
           f"({100 * report.fp32:.2f} -> {100 * report.int8:.2f}), more than --max-drop {max_drop:g}{hint}")
    if warn_only:
        return msg
    raise AccuracyDropError(msg + "; nothing written (use --warn-only to keep it anyway)")
