"""Downstream tasks: GLUE and custom sentence(-pair) tasks (`glue`), SQuAD v1.1/v2.0 (`squad`), and the
layer that joins them to a model (this module): `build_task_data` reads and tokenizes a task's train,
dev and test files once; `TaskData.collate` pads batches; `TaskData.evaluate` runs a model over the dev
set(s), scores it with the exact metrics of `mobilebert.tasks.metrics` and writes the dev predictions;
`TaskData.predict_test` writes GLUE submission files (or SQuAD predictions JSON). `load_model_for_task`
builds the right head from a preset or a checkpoint and refuses a checkpoint whose head was trained
for a different label set. torch is imported inside functions so that reading data stays light.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilebert.tasks import metrics as M
from mobilebert.errors import CheckpointError, ConfigError, DataError
from mobilebert.tasks import squad
from mobilebert.tasks.glue import (GLUE_TASKS, Example, ReadResult, TaskSpec, custom_task, get_task,
                                   read_examples, read_hf, task_file, write_submission)

__all__ = ["GLUE_TASKS", "Example", "ReadResult", "TaskSpec", "TaskData", "custom_task", "get_task", "read_examples",
           "read_hf", "task_file", "write_submission", "build_task_data", "load_tokenizer", "load_model_for_task",
           "check_teacher", "SQUAD_NAMES"]
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
GLUE_SEQ, SQUAD_SEQ = 128, 384   # default max_seq_length (official run_classifier.py / run_squad.py)
SQUAD_NAMES = ("squad", "squad1", "squad11", "squad2", "squadv1", "squadv2", "squadv11", "squadv20")


@dataclass
class TaskData:
    name: str
    kind: str                                   # "glue" (any sentence/pair task) or "squad"
    spec: TaskSpec | None
    pad_id: int
    train: list[dict] = field(default_factory=list)
    dev: dict[str, tuple] = field(default_factory=dict)    # split -> (examples or SquadData, features)
    test: dict[str, tuple] = field(default_factory=dict)   # split -> (examples, features, submission name)
    skipped: dict[str, int] = field(default_factory=dict)
    version_2: bool = False

    @property
    def is_regression(self) -> bool:
        return self.spec is not None and self.spec.is_regression

    @property
    def main_metric(self) -> str:
        return "f1" if self.kind == "squad" else self.spec.main_metric

    def head_config(self) -> dict:
        """Config fields of the task head: label count, label names and problem type."""
        if self.kind == "squad":
            return {"num_labels": 2}
        if self.spec.is_regression:
            return {"num_labels": 1, "problem_type": "regression"}
        return {"num_labels": len(self.spec.labels), "id2label": dict(enumerate(self.spec.labels)),
                "problem_type": "single_label_classification"}

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
            dtype = torch.float if self.is_regression else torch.long
            batch["labels"] = torch.tensor([f["label"] for f in feats], dtype=dtype)
        if "start_position" in feats[0]:
            batch["start_positions"] = torch.tensor([f["start_position"] for f in feats], dtype=torch.long)
            batch["end_positions"] = torch.tensor([f["end_position"] for f in feats], dtype=torch.long)
        return batch

    # ------------------------------------------------------------------ inference
    def run(self, model, feats: list[dict], batch_size: int, device, precision: str = "fp32", progress=False):
        """Model outputs per feature, as float32 numpy: logits (N, L), or start and end logits (lists)."""
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
                o = model(**b)
                if self.kind == "squad":
                    s, e = o.start_logits.float().cpu().numpy(), o.end_logits.float().cpu().numpy()
                    for j, i in enumerate(idx):
                        n = len(feats[i]["input_ids"])
                        outs[i] = (s[j, :n], e[j, :n])
                else:
                    for j, i in enumerate(idx):
                        outs[i] = o.logits[j].float().cpu().numpy()
        return outs

    def decide(self, logits: np.ndarray):
        """Logits -> class ids (argmax) or scores (regression)."""
        return logits[:, 0] if self.is_regression else logits.argmax(-1)

    def evaluate(self, model, s, device, precision: str, out_dir: Path | None = None) -> dict:
        """Score every dev split; the first split's metrics are unprefixed (MNLI: matched)."""
        result: dict = {}
        for n, (split, (gold, feats)) in enumerate(self.dev.items()):
            prefix = "" if n == 0 else f"{split}_"
            outs = self.run(model, feats, s.train.eval_batch_size, device, precision, s.train.progress)
            if self.kind == "squad":
                m = self._score_squad(gold, feats, outs, s.data, out_dir)
            else:
                preds = self.decide(np.stack(outs))
                m = self._score_glue(gold, preds)
                if out_dir is not None:
                    write_submission(self.spec, [e.guid for e in gold], list(preds), out_dir, split)
            result.update({prefix + k: v for k, v in m.items()})
        return {"metrics": result}

    def _score_glue(self, gold: list[Example], preds) -> dict:
        if self.is_regression:
            y = [e.label for e in gold]
            positive = None
        else:
            y = [self.spec.labels.index(e.label) for e in gold]
            labels = self.spec.labels
            positive = labels.index(self.spec.positive_label) if self.spec.positive_label in labels else 1
        out = M.glue_metrics(self.spec.metrics, list(preds), y, positive)
        return {**{k: M.finite_or_none(v) for k, v in out.items()}, "total": len(gold)}

    def _score_squad(self, data: squad.SquadData, feats, outs, ds, out_dir) -> dict:
        preds, odds, nbest = self._postprocess(data.examples, feats, outs, ds)
        if data.version_2:
            m = M.squad_v2_evaluate(data.as_dataset(), preds, odds)
        else:
            m = M.squad_v1_evaluate(data.as_dataset(), preds)
            m["total"] = len(data.examples)
        if out_dir is not None:
            squad.write_json(preds, Path(out_dir) / "predictions.json")
            squad.write_json(nbest, Path(out_dir) / "nbest_predictions.json")
            if data.version_2:
                squad.write_json(odds, Path(out_dir) / "null_odds.json")
        return m

    def _postprocess(self, examples, feats, outs, ds):
        objs = [f["squad"] for f in feats]
        return squad.postprocess(examples, objs, [o[0] for o in outs], [o[1] for o in outs], ds.n_best_size,
                                 ds.max_answer_length, self.version_2, ds.null_score_diff_threshold)

    def predict_test(self, model, s, device, precision: str, out_dir: Path) -> list[Path]:
        """GLUE submission files (`index<TAB>prediction`), or SQuAD predictions.json, for every test split."""
        written = []
        for split, (examples, feats, sub_name) in self.test.items():
            outs = self.run(model, feats, s.train.eval_batch_size, device, precision, s.train.progress)
            if self.kind == "squad":
                preds, odds, _ = self._postprocess(examples, feats, outs, s.data)
                written.append(squad.write_json(preds, Path(out_dir) / "predictions.json"))
                if self.version_2:
                    written.append(squad.write_json(odds, Path(out_dir) / "null_odds.json"))
            else:
                preds = self.decide(np.stack(outs))
                written.append(write_submission(self.spec, [e.guid for e in examples], list(preds), out_dir, sub_name))
        return written


# ---------------------------------------------------------------------- building


def _glue_features(spec: TaskSpec, examples: list[Example], tokenizer, max_len: int) -> list[dict]:
    pairs = None if spec.text_b is None else [e.text_b for e in examples]
    encs = tokenizer.encode_batch([e.text_a for e in examples], pairs, max_length=max_len, truncation="longest_first")
    out = []
    for e, enc in zip(examples, encs):
        label = None if e.label is None else (e.label if spec.is_regression else spec.labels.index(e.label))
        out.append({"input_ids": enc.input_ids, "token_type_ids": enc.token_type_ids, "label": label})
    return out


UNK_LIMIT = 0.5   # more [UNK] word pieces than this share: the vocabulary is not the one for this text


def check_vocab_fits(id_lists, tokenizer, where: str) -> None:
    """Refuse text that the vocabulary turns mostly into [UNK] (a wrong or truncated vocab.txt): a model would
    silently be trained or scored on [UNK]s. `id_lists` are encoded inputs (the first 2,000 are looked at: enough
    to tell, and cheap on SQuAD-sized sets); special tokens are not counted."""
    import itertools

    ids = np.fromiter((i for seq in itertools.islice(id_lists, 2000) for i in seq), dtype=np.int64)
    ids = ids[~np.isin(ids, [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id])]
    if len(ids) == 0:
        return
    share = float((ids == tokenizer.unk_id).mean())
    if share > UNK_LIMIT:
        vocab = f"the vocabulary {tokenizer.source}" if tokenizer.source else "the vocabulary"
        raise DataError(f"{where}: {share:.0%} of its word pieces are [UNK] under {vocab} ({tokenizer.vocab_size:,} "
                        "tokens); that vocabulary does not fit this text (use the one the model was trained with)")


def _squad_features(examples, tokenizer, ds, is_training: bool) -> list[dict]:
    feats = squad.build_features(examples, tokenizer, ds.max_seq_length or SQUAD_SEQ, ds.doc_stride,
                                 ds.max_query_length, is_training)
    return [{"input_ids": f.input_ids, "token_type_ids": f.token_type_ids, "start_position": f.start_position,
             "end_position": f.end_position, "squad": f} for f in feats]


def _col(value, header: bool):
    """Custom-task columns from settings are strings; without a header they are 0-based indices."""
    if value is None or header:
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"data: column {value!r} must be a 0-based index when data.header=false") from None


def _custom_spec(ds) -> TaskSpec:
    if not ds.text_a:
        raise ConfigError("data.text_a: a custom task needs its text column (and data.label, data.train_file)")
    if ds.labels is not None and len({str(x) for x in ds.labels}) != len(ds.labels):
        raise ConfigError(f"data.labels: {list(ds.labels)} lists a label twice; give each class once")
    return custom_task("custom", _col(ds.text_a, ds.header), _col(ds.text_b, ds.header), _col(ds.label, ds.header),
                       labels=ds.labels, regression=ds.regression, id_column=_col(ds.id_column, ds.header),
                       header=ds.header, train_path=ds.train_file or ds.dev_file, on_bad_row=ds.on_bad_row)


def build_task_data(ds, tokenizer, seed: int = 0, splits=("train", "dev", "test")) -> TaskData:
    """Read, check and tokenize the train/dev/test files that `ds` (DataSettings) names (`splits` only)."""
    key = ds.task.lower().replace("-", "").replace("_", "").replace(".", "")
    if key in SQUAD_NAMES:
        return _build_squad(ds, tokenizer, seed, splits)
    spec = _custom_spec(ds) if key == "custom" else get_task(ds.task)
    data = TaskData(spec.name, "glue", spec, tokenizer.pad_id)
    seq = ds.max_seq_length or GLUE_SEQ
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
        data.train, data.skipped["train"] = _glue_features(spec, ex, tokenizer, seq), train.skipped
        check_vocab_fits((f["input_ids"] for f in data.train), tokenizer, train.path)
    devs = [("dev", ds.dev_file)] if ds.dev_file or key == "custom" else [(sp, None) for sp, _ in spec.dev_files]
    for split, path in devs:
        res = read(split, path)
        if res is not None:
            ex = res.examples[:ds.max_eval_examples or None]
            data.dev[split] = (ex, _glue_features(spec, ex, tokenizer, seq))
            data.skipped[split] = res.skipped
            check_vocab_fits((f["input_ids"] for f in data.dev[split][1]), tokenizer, res.path)
    tests = [("test", ds.test_file, spec.test_files[0][2] if spec.test_files else spec.name)] if ds.test_file \
        else [] if key == "custom" else list(spec.test_files)
    for split, path, sub_name in tests:
        res = read(split, path if ds.test_file else None)
        if res is not None:
            ex = res.examples[:ds.max_eval_examples or None]
            data.test[split] = (ex, _glue_features(spec, ex, tokenizer, seq), sub_name)
            check_vocab_fits((f["input_ids"] for f in data.test[split][1]), tokenizer, res.path)
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
    data = TaskData("SQuAD", "squad", None, tokenizer.pad_id)
    if path := _squad_file(ds, "train", splits):
        tr = squad.read_squad(path, is_training=True, on_bad_row=ds.on_bad_row)
        data.version_2 = tr.version_2
        data.train = _squad_features(_subsample(tr.examples, ds.max_train_examples, seed), tokenizer, ds, True)
        data.skipped["train"] = tr.skipped
        check_vocab_fits((f["input_ids"] for f in data.train), tokenizer, path)
    if path := _squad_file(ds, "dev", splits):
        dv = squad.read_squad(path, is_training=False, on_bad_row=ds.on_bad_row)
        data.version_2 |= dv.version_2
        dv.version_2 = data.version_2
        dv.examples = dv.examples[:ds.max_eval_examples or None]
        data.dev["dev"] = (dv, _squad_features(dv.examples, tokenizer, ds, False))
        data.skipped["dev"] = dv.skipped
        check_vocab_fits((f["input_ids"] for f in data.dev["dev"][1]), tokenizer, path)
    if path := _squad_file(ds, "test", splits):
        te = squad.read_squad(path, is_training=False, on_bad_row=ds.on_bad_row, check_offsets=False)
        ex = te.examples[:ds.max_eval_examples or None]
        data.test["test"] = (ex, _squad_features(ex, tokenizer, ds, False), "predictions")
        check_vocab_fits((f["input_ids"] for f in data.test["test"][1]), tokenizer, path)
    data.name = "SQuAD v2.0" if data.version_2 else "SQuAD v1.1"
    return data


def load_tokenizer(ms):
    """The tokenizer named in model.tokenizer, else the one saved in the model.init checkpoint folder."""
    from mobilebert.presets import PRESETS
    from mobilebert.tokenizer import Tokenizer, TokenizerError, vocab_difference

    if ms.init not in PRESETS and not Path(ms.init).is_dir():
        what = "is a file, not a checkpoint folder" if Path(ms.init).exists() else "no such checkpoint folder"
        raise ConfigError(f"model.init: {ms.init}: {what} (nor one of the presets {', '.join(PRESETS)})")
    source = ms.tokenizer or (ms.init if Path(ms.init).is_dir() else None)
    if source is None:
        raise ConfigError(f"model.tokenizer: preset {ms.init!r} has no vocabulary; set model.tokenizer=PATH/vocab.txt")
    try:
        tok = Tokenizer.from_file(source)
        init = Path(ms.init)
        saved = None
        if ms.tokenizer and any((init / n).is_file() for n in ("tokenizer.json", "vocab.txt")):
            saved = Tokenizer.from_file(init)
    except TokenizerError as e:
        raise ConfigError(f"model.tokenizer: {e}") from None
    diff = vocab_difference(tok, saved) if saved is not None else None
    if diff:
        raise ConfigError(f"model.tokenizer: {ms.tokenizer} is not the vocabulary saved with model.init {init} "
                          f"({diff}); leave model.tokenizer unset to use the checkpoint's own")
    return tok


def _check_head(path: str, cfg, data: TaskData) -> None:
    """A checkpoint trained for another label set must not be fine-tuned or scored as if it were this task's."""
    arch = (cfg.architectures or [""])[0]
    want = data.head_config()
    if arch.endswith("ForSequenceClassification") and data.kind == "glue":
        if cfg.num_labels != want["num_labels"]:
            raise CheckpointError(f"{path}: its classifier has {cfg.num_labels} output(s) but task {data.name} needs "
                                  f"{want['num_labels']}; start from a pre-trained (not fine-tuned) checkpoint")
        names = list(cfg.id2label.values()) if cfg.id2label else None
        if names is not None and "id2label" in want and names != list(want["id2label"].values()):
            raise CheckpointError(f"{path}: its labels {names} differ from task {data.name}'s "
                                  f"{list(want['id2label'].values())} (order matters)")
    if arch.endswith("ForQuestionAnswering") and cfg.num_labels != 2:
        raise CheckpointError(f"{path}: its QA head has {cfg.num_labels} outputs, expected 2 (start, end)")


def load_model_for_task(init: str, data: TaskData, tokenizer, dropout: float | None = None,
                        classifier_dropout: float | None = None, fine_tuned: bool = False):
    """Sequence-classification or QA model from a preset (random init) or a checkpoint folder.

    fine_tuned: the checkpoint must hold a trained head for the task (evaluate, predict): a pre-trained or
    other-task checkpoint, whose head would be initialised at random, is refused instead of scored."""
    from mobilebert.checkpoint import load_config, load_pretrained, require_heads
    from mobilebert.heads import MobileBertForQuestionAnswering, MobileBertForSequenceClassification
    from mobilebert.presets import PRESETS, get_config

    cls = MobileBertForQuestionAnswering if data.kind == "squad" else MobileBertForSequenceClassification
    overrides = data.head_config()
    if dropout is not None:
        overrides["hidden_dropout_prob"] = dropout
    if classifier_dropout is not None and data.kind != "squad":
        overrides["classifier_dropout"] = classifier_dropout
    if init in PRESETS:
        model = cls(get_config(init, **overrides))
    elif Path(init).is_dir():
        _check_head(init, load_config(init), data)
        if fine_tuned:
            require_heads(init, {"qa"} if data.kind == "squad" else {"classifier"}, "checkpoint",
                          "its predictions would be those of a random head; fine-tune it first (mobilebert finetune)")
        model = load_pretrained(cls, init, **overrides)
    else:
        raise ConfigError(f"model.init: {init!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.tokenizer: {tokenizer.vocab_size} tokens but the model's vocabulary has "
                          f"{model.config.vocab_size}")
    return model


def check_teacher(path: str, data: TaskData, tokenizer):
    """A fine-tuned teacher for the same task and vocabulary (its logits must line up with the student's)."""
    from mobilebert.checkpoint import load_config, require_heads
    from mobilebert.heads import load_model

    cfg = load_config(path)
    arch = (cfg.architectures or [""])[0]
    want = "ForQuestionAnswering" if data.kind == "squad" else "ForSequenceClassification"
    if not arch.endswith(want):
        raise CheckpointError(f"distill.teacher: {path} is a {arch or 'base model'}, not a fine-tuned *{want} model")
    _check_head(path, cfg, data)
    require_heads(path, {"qa"} if data.kind == "squad" else {"classifier"}, "distill.teacher",
                  "the student learns from its logits")
    if cfg.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(f"distill.teacher: {path} has a {cfg.vocab_size}-token vocabulary, the student's "
                              f"tokenizer {tokenizer.vocab_size}")
    return load_model(path)
