"""Fine-tuning on GLUE, custom sentence(-pair) tasks and SQuAD, with optional task distillation.

One entry point, `finetune(settings)`: read the task (`mobilebert.tasks`), tokenize it once, build the
model from a preset or a checkpoint (a checkpoint whose head has the wrong labels is an error), and
train with the shared engine (`mobilebert.engine.train_loop`): AdamW, linear warm-up then linear
decay, gradient clipping, bf16 autocast on GPU, metrics JSONL + TensorBoard. The dev set is scored
after every `eval_every` steps (default: each epoch) with the exact GLUE/SQuAD metrics; the best
model is kept in `OUT/best/` (weights, tokenizer, resolved settings) and its dev predictions and
test-set submission files are written beside it. With `distill.teacher`, the loss mixes the hard
labels with a fine-tuned teacher's soft logits: alpha * T^2 * KL(teacher/T || student/T) +
(1 - alpha) * CE (MSE to the teacher's score for regression). Settings follow the paper's and the
official code's recipe (AdamW, eps 1e-6, wd 0.01, 10% warm-up, clip 1.0; sweep lr, batch, epochs).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from mobilebert.errors import ConfigError
from mobilebert.recipes.settings import (check_batch, check_device, check_lr, check_new_folder, check_non_negative,
                                 check_positive, check_positive_int, check_precision, check_seq_len, check_warmup,
                                 dump_settings)


@dataclass
class ModelSettings:
    init: str = "debug-mobilebert"       # a preset name (random weights) or a checkpoint folder
    tokenizer: str | None = None         # vocab.txt / tokenizer.json / folder; default: the checkpoint's
    dropout: float | None = None         # override hidden_dropout_prob (None: the checkpoint's)
    classifier_dropout: float | None = 0.1   # on the pooled output (official run_classifier.py: 0.1)
    qat: bool = False                    # quantization-aware training: fake quantization at the official
                                         # points (needs a relu6 + no_norm model, e.g. preset mobilebert-qat)


@dataclass
class DataSettings:
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
class OptimSettings:
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1                  # fraction of the steps
    eps: float = 1e-6
    end_lr_ratio: float = 1e-4           # linear decay to lr * end_lr_ratio (official create_optimizer)
    clip_grad_norm: float = 1.0


@dataclass
class TrainSettings:
    batch_size: int = 32
    epochs: float = 3.0
    max_steps: int = 0                   # > 0 overrides epochs
    grad_accum: int = 1
    eval_batch_size: int = 64
    eval_every: int = 0                  # steps; 0: at the end of every epoch
    log_every: int = 10
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
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
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


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_precision(setting: str, device) -> str:
    if setting != "auto":
        return setting
    import torch

    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


# Settings that may differ between a run and its --resume: they do not change the numbers.
RESUME_FREE = ("train.progress", "train.log_every", "train.save_every", "train.device", "train.compile",
               "train.allow_large")


def check_resume(s: FinetuneSettings, out: Path, resume: bool):
    """The checkpoint to resume from (None for a fresh run); refuses mismatched or ambiguous folders."""
    from mobilebert.engine import checkpoint as C
    from mobilebert.outpaths import check_out_dir
    from mobilebert.recipes.settings import check_unchanged

    check_out_dir(out, "out")   # a file in the way is one line now, not an OSError after the data are read
    latest = C.latest_checkpoint(out) if (out / "checkpoints").is_dir() else None
    if not resume:
        if latest is not None:
            raise ConfigError(f"out: {out} holds an interrupted fine-tuning run ({latest.name}); pass --resume to "
                              "continue it, or choose another out")
        check_new_folder("out", out)  # a finished run (best/, results.json) is not overwritten
        return None
    if latest is None:
        raise ConfigError(f"out: {out} holds no fine-tuning checkpoint to resume (no checkpoints/latest)")
    check_unchanged(s, out / "settings.yaml", RESUME_FREE)
    return latest


def finetune(s: FinetuneSettings, resume: bool = False) -> dict:
    """Train, keep the best dev checkpoint, write predictions; returns the results dict (also results.json).

    resume: continue the interrupted run in `s.out` from its newest checkpoint (same settings). A fresh run
    that stops before its first checkpoint (an error; SIGTERM/SIGINT in set-up or the first step) leaves
    no folder behind, so the corrected command is not refused."""
    from mobilebert.engine import distributed as D

    out = Path(s.out)
    existed = out.is_dir()
    fresh = not resume and not (existed and any(out.iterdir()))
    try:
        return _finetune(s, resume)
    except BaseException:
        if fresh and D.is_main() and out.is_dir() and not (out / "checkpoints" / "latest").is_file():
            if existed:  # the user's empty folder: empty it again
                for p in list(out.iterdir()):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise


def _finetune(s: FinetuneSettings, resume: bool) -> dict:
    from mobilebert.engine import LoopConfig, build_optimizer, linear_schedule, train_loop
    from mobilebert.engine import checkpoint as C
    from mobilebert.engine import distributed as D
    from mobilebert.engine.logging import MetricsLogger
    from mobilebert.tasks import check_teacher, load_model_for_task, load_tokenizer
    from mobilebert.tasks.data import build_task_data

    check_device("train.device", s.train.device)
    check_precision("train.precision", s.train.precision, "train.device", s.train.device)
    seed_everything(s.train.seed)
    out = Path(s.out)
    latest = check_resume(s, out, resume)
    # torchrun: one process per device, each trains on its slice of every global batch (DDP); rank 0
    # alone evaluates, logs and writes. Without torchrun this is the plain single-process run.
    device = D.init(None if s.train.device == "auto" else s.train.device)
    world, rank, main = D.world_size(), D.rank(), D.is_main()
    D.barrier()  # every rank has checked the folder before rank 0 writes into it
    precision = pick_precision(s.train.precision, device)
    tokenizer = load_tokenizer(s.model)
    data = build_task_data(s.data, tokenizer, seed=s.train.seed)
    if not data.train:
        raise ConfigError("data: no training file (set data.dir or data.train_file)")
    model = load_model_for_task(s.model.init, data.task, tokenizer, dropout=s.model.dropout,
                                classifier_dropout=s.model.classifier_dropout)
    if s.model.qat:
        from mobilebert.quant.qat import prepare_qat

        model = prepare_qat(model)  # saved weights stay plain float tensors; export quantizes them for real
    model = model.to(device)
    teacher = None
    if s.distill.teacher:
        teacher = check_teacher(s.distill.teacher, data.task, tokenizer).to(device).eval()
    seq = s.data.max_seq_length or data.task.max_seq_length
    for name, m in (("model.init", model), ("distill.teacher", teacher)):
        if m is not None:
            check_seq_len("data.max_seq_length", seq, m.config.max_position_embeddings, f"{name}'s")

    n, bs = len(data.train), s.train.batch_size
    if bs % (world * s.train.grad_accum):
        raise ConfigError(f"train.batch_size: {bs} is not divisible by train.grad_accum={s.train.grad_accum} x "
                          f"{world} processes")
    # With several processes every rank needs a full slice, so the last partial batch of an epoch is dropped.
    steps_per_epoch = math.ceil(n / bs) if world == 1 else n // bs
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size: {bs} is larger than the {n} training examples")
    if not s.train.allow_large:
        from mobilebert.recipes.estimate import check_finetune_memory

        check_finetune_memory(model, teacher, seq, bs // world // s.train.grad_accum, precision, device)
    if main:  # data, model and teacher are good: from here on the folder is this run's
        from mobilebert.atomic import disk_errors

        with disk_errors(out):
            out.mkdir(parents=True, exist_ok=True)
        dump_settings(s, out / "settings.yaml")
    D.barrier()
    total = s.train.max_steps or max(1, math.ceil(s.train.epochs * steps_per_epoch))
    per_rank = bs // world
    micro = per_rank // s.train.grad_accum
    perms: dict[int, np.ndarray] = {}

    def batches(step: int):
        # Step -> global batch, from a fixed permutation per epoch (reproducible for a given seed); this
        # rank's contiguous slice of it, split into grad_accum micro-batches.
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in perms:
            perms.clear()
            perms[epoch] = np.random.default_rng(s.train.seed * 1000 + epoch).permutation(n)
        idx = perms[epoch][k * bs:(k + 1) * bs][rank * per_rank:(rank + 1) * per_rank] if world > 1 else \
            perms[epoch][k * bs:(k + 1) * bs]
        parts = [idx[i:i + micro] for i in range(0, len(idx), micro)]
        return [data.collate([data.train[j] for j in p]) for p in parts]

    optimizer = build_optimizer(model, "adamw", s.optim.lr, s.optim.weight_decay, eps=s.optim.eps)
    scheduler = linear_schedule(optimizer, int(s.optim.warmup * total), total, s.optim.end_lr_ratio)
    history: list[dict] = []
    best: dict = {}
    start, loop_state = 0, None
    if latest is not None:
        # Weights, AdamW moments, schedule, RNG streams (dropout) and the loop's log window: the run
        # continues exactly where it stopped; batches are a pure function of (seed, step).
        state = C.load_checkpoint(latest, model=model, optimizer=optimizer, scheduler=scheduler)
        start, loop_state = state["step"], state["extra"].get("loop")
        history.extend(state["extra"].get("history", []))
        best.update(state["extra"].get("best", {}))
        if main:
            print(f"resuming {out} from step {start} of {total}", flush=True)
    logger = MetricsLogger(out, enabled=main, resume_from=("finetune", start) if latest is not None else None)
    train_model = D.wrap_ddp(model)  # DDP broadcasts rank 0's weights (the new head) to every rank
    if s.train.compile:
        import torch

        # Batches are padded to their longest example, so shapes vary: compile for dynamic shapes.
        train_model = torch.compile(train_model, dynamic=True)

    def eval_fn(step: int) -> dict:
        if not data.dev:
            return {}
        if not main:
            D.barrier()  # rank 0 evaluates and writes; the others wait
            return {}
        result = data.evaluate(model, device, precision, s.train.eval_batch_size, out / "dev_predictions.tmp",
                               s.train.progress)
        record = {"step": step, **result["metrics"]}
        history.append(record)
        score = result["metrics"][data.main_metric]
        if not best or (score is not None and (best["score"] is None or score > best["score"])):
            best.update(score=score, step=step, metrics=result["metrics"])
            _replace_dir(out / "dev_predictions.tmp", out / "dev_predictions")
            if s.train.save_best:
                save_model(model, tokenizer, s, out / "best", {"step": step, **result["metrics"]}, data)
        shutil.rmtree(out / "dev_predictions.tmp", ignore_errors=True)
        model.train()
        D.barrier()
        return {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}

    def checkpoint_fn(step: int, loop: dict) -> None:
        C.save_checkpoint(out, C.checkpoint_name("finetune", step), model=model, optimizer=optimizer,
                          scheduler=scheduler, step=step, stage="finetune", data_position=step * s.train.batch_size,
                          settings=s, extra={"loop": loop, "history": list(history), "best": dict(best)}, keep=1)

    loss_fn = make_loss_fn(data.task.kind, data.task.is_regression, teacher, s.distill)
    cfg = LoopConfig(max_steps=total, grad_accum=s.train.grad_accum, clip_grad_norm=s.optim.clip_grad_norm,
                     log_every=s.train.log_every, eval_every=s.train.eval_every or steps_per_epoch,
                     save_every=s.train.save_every, precision=precision, stage="finetune",
                     progress=s.train.progress, save_at_end=False)
    model.train()
    try:
        summary = train_loop(train_model, loss_fn, batches, optimizer, scheduler, cfg, logger=logger, eval_fn=eval_fn,
                             checkpoint_fn=checkpoint_fn, start_step=start, loop_state=loop_state,
                             desc=f"finetune {data.name}")
        if summary["interrupted"]:
            if main:
                print(f"stopped at step {summary['end_step']} (signal {summary['interrupted']}); continue with: "
                      f"mobilebert finetune ... --resume --out {out}", flush=True)
            return {"task": data.name, "main_metric": data.main_metric, "best_step": best.get("step"),
                    "best": best.get("metrics"), "history": history, "train_examples": n,
                    "steps": summary["end_step"], "train_seconds": summary["seconds"],
                    "final_loss": summary["loss"], "interrupted": summary["interrupted"], "device": str(device)}
        if data.dev and summary["end_step"] % cfg.eval_every:  # the loop evaluates at multiples only
            final = eval_fn(summary["end_step"])
            logger.log("finetune", summary["end_step"], {f"eval_{k}": v for k, v in final.items()})
    finally:
        logger.close()
    if not main:
        return {"task": data.name, "rank": rank, "steps": summary["end_step"], "interrupted": summary["interrupted"]}
    if not data.dev and s.train.save_best:
        save_model(model, tokenizer, s, out / "best", {"step": summary["end_step"]}, data)
    results = {"task": data.name, "main_metric": data.main_metric, "best_step": best.get("step"),
               "best": best.get("metrics"), "history": history, "train_examples": n, "steps": summary["end_step"],
               "train_seconds": summary["seconds"], "final_loss": summary["loss"], "skipped_rows": data.skipped,
               "precision": precision, "device": str(device), "interrupted": summary["interrupted"]}
    if s.data.predict_test and data.test and s.train.save_best:
        best_model = load_model_for_task(str(out / "best"), data.task, tokenizer).to(device)
        written = data.predict_test(best_model, device, precision, s.train.eval_batch_size, out / "submission",
                                    s.train.progress)
        results["test_files"] = [str(p) for p in written]
    from mobilebert.atomic import write_json

    write_json(out / "results.json", results, indent=2)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # finished: best/ holds the model
    return results


def make_loss_fn(kind: str, is_regression: bool, teacher, distill: DistillSettings):
    """The loss step the engine calls: hard-label loss, optionally mixed with the teacher's soft targets."""
    import torch
    import torch.nn.functional as F

    T, alpha = distill.temperature, distill.alpha
    inputs = ("input_ids", "attention_mask", "token_type_ids")

    def soft(student_logits, teacher_logits):
        s, t = student_logits.float(), teacher_logits.float()
        if is_regression:
            return F.mse_loss(s, t)
        return F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T

    def loss_fn(model, batch):
        x = {k: batch[k] for k in inputs}
        if kind == "squad":
            out = model(**x, start_positions=batch["start_positions"], end_positions=batch["end_positions"])
        else:
            out = model(**x, labels=batch["labels"])
        if teacher is None:
            return out.loss, {}
        with torch.no_grad():
            t_out = teacher(**x)
        if kind == "squad":
            s_loss = (soft(out.start_logits, t_out.start_logits) + soft(out.end_logits, t_out.end_logits)) / 2
        else:
            s_loss = soft(out.logits, t_out.logits)
        return alpha * s_loss + (1 - alpha) * out.loss, {"hard_loss": out.loss.detach(), "soft_loss": s_loss.detach()}

    return loss_fn


def _replace_dir(src: Path, dst: Path) -> None:
    """Swap a finished folder into place (old one removed only after the new one is there)."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model, tokenizer, settings: FinetuneSettings, folder: Path, metrics: dict, data=None) -> None:
    """Weights (HF layout) + tokenizer + resolved settings + dev metrics + task.json, written then swapped in."""
    from mobilebert.engine.distributed import unwrap
    from mobilebert.tokenizer import tokenizer_config_json

    from mobilebert.atomic import atomic_dir

    with atomic_dir(folder) as tmp:  # fsync'd, swapped in whole; a full disk is one line naming the folder
        unwrap(model).save_pretrained(tmp)
        tokenizer.save(tmp)
        (tmp / "tokenizer_config.json").write_text(tokenizer_config_json(), encoding="utf-8")
        dump_settings(settings, tmp / "settings.yaml")
        (tmp / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        if data is not None:  # what `predict` needs to know beyond config.json (SQuAD v2's null answers)
            (tmp / "task.json").write_text(json.dumps(data.task.info(), indent=2) + "\n", encoding="utf-8")


def finetune_from_config(config: str | None, overrides: list[str], out: str | None = None,
                         resume: bool = False) -> int:
    """The `mobilebert finetune` job: settings from `config` + dotted `overrides` (`out` is out=DIR), then
    `finetune`; rank 0 prints the best dev scores as JSON. Returns the exit status (130: stopped by a signal)."""
    from mobilebert.engine import distributed as D
    from mobilebert.recipes.settings import load_settings

    overrides = list(overrides) + ([f"out={out}"] if out else [])
    settings = load_settings(FinetuneSettings, config, overrides)
    try:
        results = finetune(settings, resume=resume)
    finally:
        D.cleanup()
    if results.get("interrupted"):
        return 130
    if "rank" in results:  # torchrun: rank 0 reports
        return 0
    print(json.dumps({"task": results["task"], "best_step": results["best_step"], "best": results["best"],
                      "out": settings.out}, indent=2))
    return 0
