"""Downstream tasks (paper §4.3 GLUE, §4.4 SQuAD) and what joins a task to a model.

The task abstraction is `mobilebert.tasks.base.Task`, implemented by `SentenceTask` (GLUE and custom
TSV/CSV/JSONL tasks, `tasks.sentence`) and `SquadTask` (`tasks.qa`); readers live in `tasks.glue` and
`tasks.squad`, metrics in `tasks.metrics`, and `tasks.data.build_task_data` reads a task's splits.
This module loads what a task runs on: the tokenizer (`load_tokenizer`), a model with the task's head
from a preset or a checkpoint that is refused when its head was trained for a different label set
(`load_model_for_task`), and a fine-tuned teacher for task distillation (`check_teacher`).
"""

from __future__ import annotations

from pathlib import Path

from mobilebert.errors import CheckpointError, ConfigError


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


def _check_head(path: str, cfg, task) -> None:
    """A checkpoint trained for another label set must not be fine-tuned or scored as if it were this task's."""
    arch = (cfg.architectures or [""])[0]
    bad = task.head_mismatch(cfg) if arch.endswith(task.arch) else None
    if bad is None:
        return
    if bad.what == "count":
        raise CheckpointError(f"{path}: its classifier has {bad.have} output(s) but task {task.name} needs "
                              f"{bad.want}; start from a pre-trained (not fine-tuned) checkpoint")
    if bad.what == "labels":
        raise CheckpointError(f"{path}: its labels {bad.have} differ from task {task.name}'s {bad.want} (order matters)")
    raise CheckpointError(f"{path}: its QA head has {bad.have} outputs, expected 2 (start, end)")


def load_model_for_task(init: str, task, tokenizer, dropout: float | None = None,
                        classifier_dropout: float | None = None, fine_tuned: bool = False,
                        pooling: str | None = None):
    """Sequence-classification or QA model from a preset (random init) or a checkpoint folder.

    fine_tuned: the checkpoint must hold a trained head for the task (evaluate, predict): a pre-trained or
    other-task checkpoint, whose head would be initialised at random, is refused instead of scored."""
    from mobilebert.checkpoint import load_config, load_pretrained, require_heads
    from mobilebert.presets import PRESETS, get_config

    cls = task.head_class()
    overrides = task.head_config()
    if dropout is not None:
        overrides["hidden_dropout_prob"] = dropout
    if classifier_dropout is not None and task.head == "classifier":
        overrides["classifier_dropout"] = classifier_dropout
    if pooling is not None:
        if task.head != "classifier":
            raise ConfigError(f"model.pooling: {task.name} has a {task.head} head, which reads every token's state; "
                              "only sequence classification pools (leave model.pooling unset)")
        overrides["classifier_pooling"] = pooling
    if init in PRESETS:
        model = cls(get_config(init, **overrides))
    elif Path(init).is_dir():
        _check_head(init, load_config(init), task)
        if fine_tuned:
            require_heads(init, {task.head}, "checkpoint",
                          "its predictions would be those of a random head; fine-tune it first (mobilebert finetune)")
        model = load_pretrained(cls, init, **overrides)
    else:
        raise ConfigError(f"model.init: {init!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.tokenizer: {tokenizer.vocab_size} tokens but the model's vocabulary has "
                          f"{model.config.vocab_size}")
    return model


def check_teacher(path: str, task, tokenizer):
    """A fine-tuned teacher for the same task and vocabulary (its logits must line up with the student's)."""
    from mobilebert.checkpoint import load_config, require_heads
    from mobilebert.heads import load_model

    cfg = load_config(path)
    arch = (cfg.architectures or [""])[0]
    want = task.arch
    if not arch.endswith(want):
        raise CheckpointError(f"distill.teacher: {path} is a {arch or 'base model'}, not a fine-tuned *{want} model")
    _check_head(path, cfg, task)
    require_heads(path, {task.head}, "distill.teacher",
                  "the student learns from its logits")
    if cfg.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(f"distill.teacher: {path} has a {cfg.vocab_size}-token vocabulary, the student's "
                              f"tokenizer {tokenizer.vocab_size}")
    return load_model(path)
