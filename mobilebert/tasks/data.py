"""A task's data joined to a model: read and tokenize the train/dev/test files once (`build_task_data`),
pad batches (`TaskData.collate`), run a model over features (`TaskData.run`), score the dev split(s) and
write their predictions (`TaskData.evaluate`), and write test predictions (`TaskData.predict_test`).

Every task-specific step goes through the `Task` (`mobilebert.tasks.base`): GLUE and custom tasks
(`SentenceTask`) and SQuAD (`SquadTask`) alike. torch is imported inside functions so that reading data
stays light.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilebert.errors import DataError
from mobilebert.tasks import squad
from mobilebert.tasks.base import Split, Task, check_vocab_fits, is_squad, task_key
from mobilebert.tasks.glue import (
    ReadResult,
    get_task,
    read_examples,
    task_file,
)
from mobilebert.tasks.hub import read_hf
from mobilebert.tasks.qa import SquadTask
from mobilebert.tasks.sentence import SentenceTask, custom_spec

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@dataclass
class TaskData:
    task: Task
    pad_id: int
    train: list[dict] = field(default_factory=list)
    dev: dict[str, Split] = field(default_factory=dict)    # split -> examples, features, gold
    test: dict[str, Split] = field(default_factory=dict)   # split -> examples, features, submission name
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def main_metric(self) -> str:
        return self.task.main_metric

    def collate(self, feats: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in feats)
        ids = torch.full((len(feats), width), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(feats), width), dtype=torch.long)
        mask = torch.zeros((len(feats), width), dtype=torch.long)
        for i, f in enumerate(feats):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            types[i, :n] = torch.tensor(f["token_type_ids"])
            mask[i, :n] = 1
        batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
        if feats[0].get("label") is not None:
            dtype = torch.float if self.task.is_regression else torch.long
            batch["labels"] = torch.tensor([f["label"] for f in feats], dtype=dtype)
        if "start_position" in feats[0]:
            batch["start_positions"] = torch.tensor([f["start_position"] for f in feats], dtype=torch.long)
            batch["end_positions"] = torch.tensor([f["end_position"] for f in feats], dtype=torch.long)
        return batch

    def run(self, model, feats: list[dict], batch_size: int, device, precision: str = "fp32", progress=False):
        """Model outputs per feature, as float32 numpy (`Task.outputs`): logits, or (start, end) logits."""
        import torch
        from tqdm.auto import tqdm

        model.eval()
        order = np.argsort([len(f["input_ids"]) for f in feats], kind="stable")  # similar lengths batch well
        outs: list = [None] * len(feats)
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with torch.no_grad(), amp:
            for k in tqdm(range(0, len(order), batch_size), desc="evaluate", disable=not progress, leave=False):
                idx = order[k:k + batch_size]
                b = self.collate([{**feats[i], "label": None} for i in idx])
                b = {key: v.to(device) for key, v in b.items() if key in MODEL_INPUTS}
                per_feature = self.task.outputs(model(**b), [len(feats[i]["input_ids"]) for i in idx])
                for i, o in zip(idx, per_feature):
                    outs[i] = o
        return outs

    def evaluate(self, model, device, precision: str, batch_size: int, out_dir: Path | None = None,
                 progress: bool = False) -> dict:
        """Score every dev split; the first split's metrics are unprefixed (MNLI: matched)."""
        result: dict = {}
        for n, (name, split) in enumerate(self.dev.items()):
            prefix = "" if n == 0 else f"{name}_"
            outs = self.run(model, split.features, batch_size, device, precision, progress)
            preds = self.task.predict(split.examples, split.features, outs)
            m = self.task.score(split.gold, preds)
            if out_dir is not None:
                self.task.write(split, preds, out_dir, name, dev=True)
            result.update({prefix + k: v for k, v in m.items()})
        return {"metrics": result}

    def predict_test(self, model, device, precision: str, batch_size: int, out_dir: Path,
                     progress: bool = False) -> list[Path]:
        """GLUE submission files (`index<TAB>prediction`), or SQuAD predictions JSON, for every test split."""
        written = []
        for split in self.test.values():
            outs = self.run(model, split.features, batch_size, device, precision, progress)
            preds = self.task.predict(split.examples, split.features, outs)
            written += self.task.write(split, preds, out_dir, split.submission, dev=False)
        return written


# ---------------------------------------------------------------------- building


def build_task_data(ds, tokenizer, seed: int = 0, splits=("train", "dev", "test")) -> TaskData:
    """Read, check and tokenize the train/dev/test files that the data settings `ds` name (`splits` only)."""
    key = task_key(ds.task)
    if is_squad(ds.task):
        return _build_squad(ds, tokenizer, seed, splits)
    spec = custom_spec(ds) if key == "custom" else get_task(ds.task)
    task = SentenceTask(spec)
    data = TaskData(task, tokenizer.pad_id)
    seq = ds.max_seq_length
    hf = ds.dir is not None and ds.dir.startswith("hf:")

    def read(split: str, explicit: str | None) -> ReadResult | None:
        if split.split("_")[0] not in splits:
            return None
        if explicit:
            return read_examples(spec, explicit, split, ds.on_bad_row)
        if hf:
            return read_hf(spec, split, ds.dir[3:] or "glue")
        if ds.dir is None or key == "custom":
            return None
        try:
            path = task_file(spec, ds.dir, split)
        except DataError:
            if split.startswith("test"):
                return None   # test sets are optional; a malformed one is still an error below
            raise
        return read_examples(spec, path, split, ds.on_bad_row)

    train = read("train", ds.train_file)
    if train is not None:
        ex = _subsample(train.examples, ds.max_train_examples, seed)
        data.train, data.skipped["train"] = task.features(ex, tokenizer, seq, training=True), train.skipped
        check_vocab_fits((f["input_ids"] for f in data.train), tokenizer, train.path)
    devs = [("dev", ds.dev_file)] if ds.dev_file or key == "custom" else [(sp, None) for sp, _ in spec.dev_files]
    for split, path in devs:
        res = read(split, path)
        if res is not None:
            ex = res.examples[:ds.max_eval_examples or None]
            data.dev[split] = Split(ex, task.features(ex, tokenizer, seq), gold=ex)
            data.skipped[split] = res.skipped
            check_vocab_fits((f["input_ids"] for f in data.dev[split].features), tokenizer, res.path)
    tests = [("test", ds.test_file, spec.test_files[0][2] if spec.test_files else spec.name)] if ds.test_file \
        else [] if key == "custom" else list(spec.test_files)
    for split, path, sub_name in tests:
        res = read(split, path if ds.test_file else None)
        if res is not None:
            ex = res.examples[:ds.max_eval_examples or None]
            data.test[split] = Split(ex, task.features(ex, tokenizer, seq), submission=sub_name)
            check_vocab_fits((f["input_ids"] for f in data.test[split].features), tokenizer, res.path)
    return data


def _subsample(examples: list, k: int, seed: int) -> list:
    if not k or k >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), k, replace=False))
    return [examples[i] for i in keep]


def _squad_file(ds, which: str, splits) -> str | None:
    if which not in splits:
        return None
    explicit = {"train": ds.train_file, "dev": ds.dev_file, "test": ds.test_file}[which]
    if explicit or ds.dir is None or which == "test":
        return explicit
    for name in (f"{which}-v2.0.json", f"{which}-v1.1.json"):
        if (Path(ds.dir) / name).is_file():
            return str(Path(ds.dir) / name)
    return None


def _build_squad(ds, tokenizer, seed: int, splits) -> TaskData:
    task = SquadTask(False, ds.doc_stride, ds.max_query_length, ds.max_answer_length, ds.n_best_size,
                     ds.null_score_diff_threshold)
    data = TaskData(task, tokenizer.pad_id)
    seq = ds.max_seq_length
    if path := _squad_file(ds, "train", splits):
        tr = squad.read_squad(path, is_training=True, on_bad_row=ds.on_bad_row)
        task.version_2 = tr.version_2
        data.train = task.features(_subsample(tr.examples, ds.max_train_examples, seed), tokenizer, seq, True)
        data.skipped["train"] = tr.skipped
        check_vocab_fits((f["input_ids"] for f in data.train), tokenizer, path)
    if path := _squad_file(ds, "dev", splits):
        dv = squad.read_squad(path, is_training=False, on_bad_row=ds.on_bad_row)
        task.version_2 |= dv.version_2
        dv.version_2 = task.version_2
        dv.examples = dv.examples[:ds.max_eval_examples or None]
        data.dev["dev"] = Split(dv.examples, task.features(dv.examples, tokenizer, seq), gold=dv)
        data.skipped["dev"] = dv.skipped
        check_vocab_fits((f["input_ids"] for f in data.dev["dev"].features), tokenizer, path)
    if path := _squad_file(ds, "test", splits):
        te = squad.read_squad(path, is_training=False, on_bad_row=ds.on_bad_row, check_offsets=False)
        ex = te.examples[:ds.max_eval_examples or None]
        data.test["test"] = Split(ex, task.features(ex, tokenizer, seq), submission="predictions")
        check_vocab_fits((f["input_ids"] for f in data.test["test"].features), tokenizer, path)
    return data
