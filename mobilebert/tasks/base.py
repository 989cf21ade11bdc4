"""The task abstraction that GLUE, custom sentence(-pair) tasks and SQuAD implement (paper §4.3, §4.4).

A `Task` knows, with explicit arguments and nothing from the fine-tuning settings: the head it needs
(`head_config`, `head`, `head_class`), how its examples become model features (`features`), how the
model's outputs become predictions (`outputs`, `predict`), how predictions are scored with the exact
GLUE/SQuAD metrics (`score`) and written in the submission/official layout (`write`). Fine-tuning,
evaluate, predict, score and the quantization gate all go through it. The facts that used to be
written in several places live here once: task-name normalisation (`task_key`), the positive class
for F1 (`positive_index`) and the check of a checkpoint's head against the task (`Task.head_mismatch`).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilebert.errors import DataError

GLUE_SEQ, SQUAD_SEQ = 128, 384   # default max_seq_length (official run_classifier.py / run_squad.py)
SQUAD_NAMES = ("squad", "squad1", "squad11", "squad2", "squadv1", "squadv2", "squadv11", "squadv20")
UNK_LIMIT = 0.5   # more [UNK] word pieces than this share: the vocabulary is not the one for this text


def task_key(name: str) -> str:
    """A task name in the one spelling used to compare names: "SST-2", "sst_2", "sst2" -> "sst2"."""
    return str(name).lower().replace("-", "").replace("_", "").replace(".", "")


def is_squad(name: str) -> bool:
    """Whether a task name means SQuAD (v1.1 or v2.0; the version is read from the files)."""
    return task_key(name) in SQUAD_NAMES


def positive_index(labels, positive_label: str) -> int:
    """The class F1 is computed for: the task's positive label, else class 1 (GLUE's "1")."""
    labels = list(labels)
    return labels.index(positive_label) if positive_label in labels else 1


@dataclass(frozen=True)
class HeadMismatch:
    """Why a checkpoint's head does not fit a task: "count" (outputs), "labels" (names/order) or "qa"."""

    what: str
    have: object
    want: object


@dataclass
class Split:
    """One split of a task, read and tokenized: its examples, their features, the gold the scorer needs
    (the examples for GLUE, the `SquadData` for SQuAD) and, for test splits, the submission name."""

    examples: list
    features: list[dict]
    gold: object = None
    submission: str = ""


class Task(ABC):
    """One downstream task. Subclasses: `SentenceTask` (GLUE and custom), `SquadTask` (SQuAD v1.1/v2.0)."""

    kind: str                 # "glue" or "squad", as written to a fine-tuned checkpoint's task.json
    head: str                 # the checkpoint head the task needs ("classifier" or "qa")
    arch: str                 # the model class name suffix ("ForSequenceClassification", ...)
    max_seq_length: int       # the official default sequence length
    target_keys: tuple[str, ...]   # batch keys of the training targets
    output_keys: tuple[str, ...]   # model output fields the task reads (and a teacher's soft targets match)
    is_regression: bool = False
    version_2: bool = False

    name: str
    main_metric: str

    def head_class(self):
        """The `mobilebert.heads` model class of this task's head."""
        from mobilebert import heads

        return getattr(heads, "MobileBert" + self.arch)

    @abstractmethod
    def head_config(self) -> dict:
        """Config fields of the task head: label count, label names and problem type."""

    def head_mismatch(self, cfg, generic_names_ok: bool = False) -> HeadMismatch | None:
        """None when a checkpoint config's head fits this task, else what differs (the caller words it).

        generic_names_ok: HF's placeholder names LABEL_0, LABEL_1, ... are not compared."""
        if self.arch == "ForQuestionAnswering":
            return None if cfg.num_labels == 2 else HeadMismatch("qa", cfg.num_labels, 2)
        want = self.head_config()
        if cfg.num_labels != want["num_labels"]:
            return HeadMismatch("count", cfg.num_labels, want["num_labels"])
        names = list(cfg.id2label.values()) if cfg.id2label else None
        if generic_names_ok and names and all(str(n).startswith("LABEL_") for n in names):
            names = None
        if names and "id2label" in want and names != list(want["id2label"].values()):
            return HeadMismatch("labels", names, list(want["id2label"].values()))
        return None

    def info(self) -> dict:
        """What a fine-tuned checkpoint's task.json records (read back by `predict`)."""
        return {"task": self.name, "kind": self.kind, "version_2": self.version_2, "main_metric": self.main_metric}

    @abstractmethod
    def features(self, examples: list, tokenizer, max_seq_length: int | None = None,
                 training: bool = False) -> list[dict]:
        """Examples -> unpadded feature dicts (input_ids, token_type_ids and the training targets)."""

    @abstractmethod
    def outputs(self, model_output, lengths: list[int]) -> list:
        """One batch's model output -> one float32 numpy output per feature (`lengths`: unpadded lengths)."""

    @abstractmethod
    def predict(self, examples: list, features: list[dict], outputs: list):
        """Per-feature outputs -> the task's predictions for `examples`."""

    @abstractmethod
    def answers(self, examples: list, features: list[dict], outputs: list) -> list[dict]:
        """What `mobilebert predict` reports per example: {"label", "probability"}, {"score"} or
        {"answer", "probability"}."""

    @abstractmethod
    def score(self, gold, predictions) -> dict:
        """Exact GLUE/SQuAD metrics of `predictions` against a split's gold."""

    @abstractmethod
    def write(self, split: Split, predictions, out_dir: Path, name: str, dev: bool = True) -> list[Path]:
        """Write predictions in the submission/official layout; returns the files written."""


def check_vocab_fits(id_lists, tokenizer, where: str) -> None:
    """Refuse text that the vocabulary turns mostly into [UNK] (a wrong or truncated vocab.txt): a model would
    silently be trained or scored on [UNK]s. `id_lists` are encoded inputs (the first 2,000 are looked at: enough
    to tell, and cheap on SQuAD-sized sets); special tokens are not counted."""
    ids = np.fromiter((i for seq in itertools.islice(id_lists, 2000) for i in seq), dtype=np.int64)
    ids = ids[~np.isin(ids, [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id])]
    if len(ids) == 0:
        return
    share = float((ids == tokenizer.unk_id).mean())
    if share > UNK_LIMIT:
        vocab = f"the vocabulary {tokenizer.source}" if tokenizer.source else "the vocabulary"
        raise DataError(f"{where}: {share:.0%} of its word pieces are [UNK] under {vocab} ({tokenizer.vocab_size:,} "
                        "tokens); that vocabulary does not fit this text (use the one the model was trained with)")
