"""Settings of `mobilebert finetune` (GLUE, custom tasks, SQuAD; optional task distillation) and the check
of a `--resume` against the interrupted run's folder.

The YAML maps 1:1 onto these dataclasses (`mobilebert.recipes.settings.load_settings`). The `Finetune*` names
keep them apart from `mobilebert train`'s (recipes/train_settings.py). Defaults follow the paper's and the
official code's fine-tuning recipe (AdamW, eps 1e-6, wd 0.01, 10% warm-up, clip 1.0; sweep lr, batch, epochs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mobilebert.errors import ConfigError
from mobilebert.recipes.settings import (check_batch, check_lr, check_new_folder, check_non_negative, check_positive,
                                         check_positive_int, check_seq_len, check_unchanged, check_warmup)


@dataclass
class FinetuneModelSettings:
    init: str = "debug-mobilebert"       # a preset name (random weights) or a checkpoint folder
    tokenizer: str | None = None         # vocab.txt / tokenizer.json / folder; default: the checkpoint's
    dropout: float | None = None         # override hidden_dropout_prob (None: the checkpoint's)
    classifier_dropout: float | None = 0.1   # on the pooled output (official run_classifier.py: 0.1)
    pooling: Literal["cls", "mean", "siamese"] | None = None  # what the classifier reads: the [CLS] state, the
    #                                      mean of the last-layer states over real tokens, or (siamese) the two
    #                                      sentences of a pair encoded apart; None: the checkpoint's (cls)
    qat: bool = False                    # quantization-aware training: fake quantization at the official
                                         # points (needs a relu6 + no_norm model, e.g. preset mobilebert-qat)


@dataclass
class FinetuneDataSettings:
    task: str = "sst-2"                  # a GLUE task, "squad" (v1.1 or v2.0, from the file), or "custom"
    dir: str | None = None               # GLUE root or task folder; "hf:glue" reads the Hugging Face hub
    train_file: str | None = None        # explicit files (custom tasks, SQuAD, or to override GLUE's)
    dev_file: str | None = None
    test_file: str | None = None
    text_a: str | None = None            # custom tasks: column names (or 0-based indices if header=false)
    text_b: str | None = None
    label: str = "label"
    id_column: str | None = None
    labels: list[str] | None = None      # custom classification: label list (default: sorted train labels)
    regression: bool = False
    header: bool = True
    max_seq_length: int | None = None    # None: 128 for sentence tasks, 384 for SQuAD (official settings)
    on_bad_row: Literal["skip", "error"] = "skip"
    max_train_examples: int = 0          # 0: all; otherwise a seeded random subset (for quick runs)
    max_eval_examples: int = 0           # 0: all; otherwise the first N dev and test examples
    predict_test: bool = True            # write test-set predictions in the GLUE submission format
    doc_stride: int = 128                # SQuAD (official run_squad.py settings)
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best_size: int = 20
    null_score_diff_threshold: float = 0.0


@dataclass
class FinetuneOptimSettings:
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1                  # fraction of the steps (train's key is `warmup_steps`, a step count;
                                         # both kept for compatibility, resolved by settings.warmup_steps)
    eps: float = 1e-6
    end_lr_ratio: float = 1e-4           # linear decay to lr * end_lr_ratio (official create_optimizer)
    clip_grad_norm: float = 1.0


@dataclass
class FinetuneTrainSettings:
    batch_size: int = 32
    epochs: float = 3.0
    max_steps: int = 0                   # > 0 overrides epochs
    grad_accum: int = 1
    eval_batch_size: int = 64
    eval_every: int = 0                  # steps; 0: at the end of every epoch
    log_every: int = 10
    # device, precision and seed live under `train.` here and under `run.` in `mobilebert train` (kept for
    # compatibility); both are picked by the same functions (settings.start_device, pick_precision, seed_everything)
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = "auto"   # auto: bf16 autocast on GPU, fp32 on CPU
    device: str = "auto"
    progress: bool = True
    save_best: bool = True               # False (sweeps): keep metrics only
    compile: bool = False                # torch.compile the training forward (dynamic shapes; GPU speed)
    save_every: int = 0                  # steps between resumable checkpoints (OUT/checkpoints); 0: only on
                                         # SIGTERM/SIGINT. `--resume` continues from the newest one, bit-exact
    allow_large: bool = False            # start even when the memory estimate exceeds this machine's memory


@dataclass
class DistillSettings:
    teacher: str | None = None           # a fine-tuned checkpoint for the same task
    temperature: float = 1.0
    alpha: float = 0.5                   # weight of the soft (teacher) loss

    def validate(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill.alpha: {self.alpha} is not in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature: {self.temperature} must be positive")


@dataclass
class FinetuneSettings:
    out: str = "runs/finetune"
    model: FinetuneModelSettings = field(default_factory=FinetuneModelSettings)
    data: FinetuneDataSettings = field(default_factory=FinetuneDataSettings)
    optim: FinetuneOptimSettings = field(default_factory=FinetuneOptimSettings)
    train: FinetuneTrainSettings = field(default_factory=FinetuneTrainSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)

    def validate(self):
        """The same rules and messages as `train` (mobilebert.recipes.settings); the device, the precision and the
        sequence length against the model are checked when the run starts (`finetune`)."""
        o, t, d = self.optim, self.train, self.data
        check_lr("optim.lr", o.lr)
        check_warmup("optim.warmup", o.warmup, fraction=True)
        for name in ("weight_decay", "clip_grad_norm", "end_lr_ratio", "eps"):
            check_non_negative(f"optim.{name}", getattr(o, name))
        check_batch("train.batch_size", t.batch_size, "train.grad_accum", t.grad_accum)
        check_positive_int("train.eval_batch_size", t.eval_batch_size)
        check_positive_int("train.log_every", t.log_every)
        check_positive("train.epochs", t.epochs)   # fractional epochs are fine (quick runs)
        for name in ("max_steps", "eval_every", "save_every"):
            check_non_negative(f"train.{name}", getattr(t, name))
        if d.max_seq_length is not None:
            check_seq_len("data.max_seq_length", d.max_seq_length)
        for name in ("doc_stride", "max_query_length", "max_answer_length", "n_best_size"):
            check_positive_int(f"data.{name}", getattr(d, name))
        for name in ("max_train_examples", "max_eval_examples"):
            check_non_negative(f"data.{name}", getattr(d, name))


# Settings that may differ between a run and its --resume: they do not change the numbers.
RESUME_FREE = ("train.progress", "train.log_every", "train.save_every", "train.device", "train.compile",
               "train.allow_large")


def check_resume(s: FinetuneSettings, out: Path, resume: bool):
    """The checkpoint to resume from (None: start from step 0); refuses mismatched or ambiguous folders.

    --resume on a run killed before its first checkpoint starts it over (as `train --resume` does), so no
    folder is left that neither a fresh run nor --resume accepts."""
    from mobilebert.engine import checkpoint as C
    from mobilebert.outpaths import check_out_dir

    check_out_dir(out, "out")   # a file in the way is one line now, not an OSError after the data are read
    latest = C.latest_checkpoint(out) if (out / "checkpoints").is_dir() else None
    if not resume:
        if latest is not None:
            raise ConfigError(f"out: {out} holds an interrupted fine-tuning run ({latest.name}); pass --resume to "
                              "continue it, or choose another out")
        check_new_folder("out", out)  # a finished run (best/, results.json) is not overwritten
        return None
    if latest is None and (out / "results.json").is_file():
        raise ConfigError(f"out: {out} holds a finished fine-tuning run (results.json); nothing to resume")
    if not (out / "settings.yaml").is_file():
        raise ConfigError(f"out: {out} holds no fine-tuning run to resume (no settings.yaml)")
    check_unchanged(s, out / "settings.yaml", RESUME_FREE)
    return latest  # None: stopped (SIGKILL, power loss) before its first checkpoint; the same run, from step 0
