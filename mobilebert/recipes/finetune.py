"""Fine-tuning on GLUE, custom sentence(-pair) tasks and SQuAD, with optional task distillation (paper §4.4).

The job, top to bottom, in the same shape as `mobilebert train` (recipes/train.py):
    settings in   `FinetuneSettings` (recipes/finetune_settings.py); `Finetune(settings, resume)` checks the
                  device, the precision and the run folder before anything is written
    setup         read the task (`mobilebert.tasks`), tokenize it once, build the model from a preset or a
                  checkpoint (a head with the wrong labels is an error), the optional teacher, AdamW with
                  linear warm-up then linear decay; a `--resume` restores the newest checkpoint
    run           the loss step (`FinetuneLoss`) handed to the one engine loop (`engine.loop.train_loop`):
                  gradient clipping, bf16 autocast on GPU, metrics JSONL + TensorBoard; the dev set is scored
                  every `eval_every` steps (default: each epoch) with the exact GLUE/SQuAD metrics
    files         OUT/settings.yaml, metrics.jsonl, checkpoints/ (removed when finished), best/ (weights,
                  tokenizer, resolved settings, task.json), dev_predictions/, submission/, results.json
With `distill.teacher`, the loss mixes the hard labels with a fine-tuned teacher's soft logits:
alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE (MSE to the teacher's score for regression).
`finetune(settings, resume)` runs the job and returns its results.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mobilebert import engine
from mobilebert.engine import checkpoint as C
from mobilebert.engine import distributed as D
from mobilebert.errors import ConfigError
from mobilebert.recipes.finetune_settings import DistillSettings, FinetuneSettings, check_resume
from mobilebert.recipes.settings import (check_device, check_precision, check_seq_len, dump_settings, pick_precision,
                                         seed_everything, start_device, warmup_steps)
from mobilebert.recipes.train_state import discard_fresh_run  # the same rule for both recipes' folders


def finetune(s: FinetuneSettings, resume: bool = False) -> dict:
    """Train, keep the best dev checkpoint, write predictions; returns the results dict (also results.json)."""
    return Finetune(s, resume).run()


class Finetune:
    """`Finetune(settings, resume).run()`: `__init__` checks the device, the precision and the run folder, and
    `_setup` the data, the model and the memory, all before anything is written.

    resume: continue the interrupted run in `s.out` from its newest checkpoint (same settings)."""

    def __init__(self, s: FinetuneSettings, resume: bool = False):
        self.s, self.resume, self.out = s, resume, Path(s.out)
        self.existed = self.out.is_dir()
        self.fresh = not resume and not (self.existed and any(self.out.iterdir()))
        check_device("train.device", s.train.device)
        check_precision("train.precision", s.train.precision, "train.device", s.train.device)
        seed_everything(s.train.seed)
        self.latest = check_resume(s, self.out, resume)  # the checkpoint to continue from (None: a fresh run)
        # torchrun: one process per device, each trains on its slice of every global batch (DDP); rank 0
        # alone evaluates, logs and writes. Without torchrun this is the plain single-process run.
        self.device = start_device(s.train.device)
        D.barrier()  # every rank has checked the folder before rank 0 writes into it
        self.precision = pick_precision(s.train.precision, self.device)

    # ------------------------------------------------------------------ the whole run
    def run(self) -> dict:
        """`_run`; a fresh run that stops before its first checkpoint (an error; SIGTERM/SIGINT in set-up or the
        first step) leaves no folder behind, so the corrected command is not refused."""
        try:
            return self._run()
        except BaseException:
            if self.fresh:
                discard_fresh_run(self.out, self.existed)
            raise

    def _run(self) -> dict:
        s, out = self.s, self.out
        self._setup()
        data, main = self.data, D.is_main()
        logger = self.logger
        cfg = engine.LoopConfig(max_steps=self.total, grad_accum=s.train.grad_accum,
                                clip_grad_norm=s.optim.clip_grad_norm, log_every=s.train.log_every,
                                eval_every=s.train.eval_every or self.steps_per_epoch, save_every=s.train.save_every,
                                precision=self.precision, stage="finetune", progress=s.train.progress,
                                save_at_end=False)
        self.model.train()
        try:
            summary = engine.train_loop(self.train_model, self.loss_fn, self._batches, self.optimizer, self.scheduler,
                                        cfg, logger=logger, eval_fn=self._eval, checkpoint_fn=self._checkpoint,
                                        start_step=self.start, loop_state=self.loop_state,
                                        desc=f"finetune {data.name}")
            if summary["interrupted"]:
                if main:
                    print(f"stopped at step {summary['end_step']} (signal {summary['interrupted']}); continue with: "
                          f"mobilebert finetune ... --resume --out {out}", flush=True)
                return {"task": data.name, "main_metric": data.main_metric, "best_step": self.best.get("step"),
                        "best": self.best.get("metrics"), "history": self.history, "train_examples": len(data.train),
                        "steps": summary["end_step"], "train_seconds": summary["seconds"],
                        "final_loss": summary["loss"], "interrupted": summary["interrupted"],
                        "device": str(self.device)}
            if data.dev and summary["end_step"] % cfg.eval_every:  # the loop evaluates at multiples only
                final = self._eval(summary["end_step"])
                logger.log("finetune", summary["end_step"], {f"eval_{k}": v for k, v in final.items()})
        finally:
            logger.close()
        if not main:
            return {"task": data.name, "rank": D.rank(), "steps": summary["end_step"],
                    "interrupted": summary["interrupted"]}
        return self._finish(summary)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        """Data, model, teacher, memory check, the run folder, optimizer and schedule (+ the resumed state)."""
        from mobilebert.engine.logging import MetricsLogger
        from mobilebert.tasks import check_teacher, load_model_for_task, load_tokenizer
        from mobilebert.tasks.data import build_task_data

        s, out, device, latest = self.s, self.out, self.device, self.latest
        world, main = D.world_size(), D.is_main()
        self.tokenizer = tokenizer = load_tokenizer(s.model)
        self.data = data = build_task_data(s.data, tokenizer, seed=s.train.seed)
        if not data.train:
            raise ConfigError("data: no training file (set data.dir or data.train_file)")
        model = load_model_for_task(s.model.init, data.task, tokenizer, dropout=s.model.dropout,
                                    classifier_dropout=s.model.classifier_dropout, pooling=s.model.pooling)
        pooling = model.config.classifier_pooling
        report = getattr(model, "load_report", None)  # None: a preset, every weight new
        new_head = report is None or "classifier.weight" in report.missing
        if pooling == "siamese" and data.task.is_regression and new_head:
            scores = [f["label"] for f in data.train]
            model.fit_cosine_range(min(scores), max(scores))  # cosine 0..1 -> the training scores' range
        if pooling == "mean" and main:
            print("model.pooling=mean: the classifier reads the mean of the last-layer states; transformers' "
                  "MobileBERT/BERT classes ignore classifier_pooling and read [CLS], so serve this checkpoint with "
                  "mobilebert or its ONNX export")
        elif pooling == "siamese" and main:
            print("model.pooling=siamese: each sentence of a pair is encoded alone and the classifier reads "
                  "[u, v, |u - v|, u * v] of their mean states (a regression score: cos(u, v)); transformers cannot "
                  "load this classifier, so serve this checkpoint with mobilebert or its ONNX or ExecuTorch export")
        if s.model.qat:
            from mobilebert.quant.qat import prepare_qat

            model = prepare_qat(model)  # saved weights stay plain float tensors; export quantizes them for real
        self.model = model = model.to(device)
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
        self.steps_per_epoch = math.ceil(n / bs) if world == 1 else n // bs
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size: {bs} is larger than the {n} training examples")
        if not s.train.allow_large:
            from mobilebert.recipes.estimate import check_finetune_memory

            check_finetune_memory(model, teacher, seq, bs // world // s.train.grad_accum, self.precision, device)
        if main:  # data, model and teacher are good: from here on the folder is this run's
            from mobilebert.atomic import disk_errors

            with disk_errors(out):
                out.mkdir(parents=True, exist_ok=True)
            dump_settings(s, out / "settings.yaml")
        D.barrier()
        self.total = total = s.train.max_steps or max(1, math.ceil(s.train.epochs * self.steps_per_epoch))
        self._perms: dict[int, np.ndarray] = {}

        o = s.optim
        self.optimizer = engine.build_optimizer(model, "adamw", o.lr, o.weight_decay, eps=o.eps)
        self.scheduler = engine.linear_schedule(self.optimizer, warmup_steps(o.warmup, total, fraction=True), total,
                                                o.end_lr_ratio)
        self.history: list[dict] = []
        self.best: dict = {}
        self.start, self.loop_state = 0, None
        if latest is not None:
            # Weights, AdamW moments, schedule, RNG streams (dropout) and the loop's log window: the run
            # continues exactly where it stopped; batches are a pure function of (seed, step).
            state = C.load_checkpoint(latest, model=model, optimizer=self.optimizer, scheduler=self.scheduler)
            self.start, self.loop_state = state["step"], state["extra"].get("loop")
            self.history.extend(state["extra"].get("history", []))
            self.best.update(state["extra"].get("best", {}))
            if main:
                print(f"resuming {out} from step {self.start} of {total}", flush=True)
        elif self.resume and main:
            print(f"{out}: no checkpoint yet; starting the run over from step 0", flush=True)
        self.logger = MetricsLogger(out, enabled=main,
                                    resume_from=("finetune", self.start) if latest is not None else None)
        self.train_model = D.wrap_ddp(model)  # DDP broadcasts rank 0's weights (the new head) to every rank
        if s.train.compile:
            # Batches are padded to their longest example, so shapes vary: compile for dynamic shapes.
            self.train_model = torch.compile(self.train_model, dynamic=True)
        task = data.task
        self.loss_fn = FinetuneLoss(task.target_keys, task.output_keys, task.is_regression, teacher, s.distill)

    # ------------------------------------------------------------------ what the loop calls
    def _batches(self, step: int) -> list[dict]:
        """Step -> global batch, from a fixed permutation per epoch (reproducible for a given seed); this
        rank's contiguous slice of it, split into grad_accum micro-batches."""
        s, data, perms = self.s, self.data, self._perms
        bs, world, rank = s.train.batch_size, D.world_size(), D.rank()
        per_rank = bs // world
        micro = per_rank // s.train.grad_accum
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch not in perms:
            perms.clear()
            perms[epoch] = np.random.default_rng(s.train.seed * 1000 + epoch).permutation(len(data.train))
        idx = perms[epoch][k * bs:(k + 1) * bs][rank * per_rank:(rank + 1) * per_rank] if world > 1 else \
            perms[epoch][k * bs:(k + 1) * bs]
        parts = [idx[i:i + micro] for i in range(0, len(idx), micro)]
        return [data.collate([data.train[j] for j in p]) for p in parts]

    def _eval(self, step: int) -> dict:
        """Score the dev set; a new best is saved to OUT/best and its predictions to OUT/dev_predictions."""
        s, out, data, model = self.s, self.out, self.data, self.model
        if not data.dev:
            return {}
        if not D.is_main():
            D.barrier()  # rank 0 evaluates and writes; the others wait
            return {}
        result = data.evaluate(model, self.device, self.precision, s.train.eval_batch_size, out / "dev_predictions.tmp",
                               s.train.progress)
        record = {"step": step, **result["metrics"]}
        self.history.append(record)
        score, best = result["metrics"][data.main_metric], self.best
        if not best or (score is not None and (best["score"] is None or score > best["score"])):
            best.update(score=score, step=step, metrics=result["metrics"])
            _replace_dir(out / "dev_predictions.tmp", out / "dev_predictions")
            if s.train.save_best:
                save_model(model, self.tokenizer, s, out / "best", {"step": step, **result["metrics"]}, data)
        shutil.rmtree(out / "dev_predictions.tmp", ignore_errors=True)
        model.train()
        D.barrier()
        return {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}

    def _checkpoint(self, step: int, loop: dict) -> None:
        C.save_checkpoint(self.out, C.checkpoint_name("finetune", step), model=self.model, optimizer=self.optimizer,
                          scheduler=self.scheduler, step=step, stage="finetune",
                          data_position=step * self.s.train.batch_size, settings=self.s,
                          extra={"loop": loop, "history": list(self.history), "best": dict(self.best)}, keep=1)

    # ------------------------------------------------------------------ the files of a finished run
    def _finish(self, summary: dict) -> dict:
        """best/ (when there is no dev set), the test-set submission, results.json; checkpoints/ removed."""
        from mobilebert.atomic import write_json
        from mobilebert.tasks import load_model_for_task

        s, out, data, best = self.s, self.out, self.data, self.best
        if not data.dev and s.train.save_best:
            save_model(self.model, self.tokenizer, s, out / "best", {"step": summary["end_step"]}, data)
        results = {"task": data.name, "main_metric": data.main_metric, "best_step": best.get("step"),
                   "best": best.get("metrics"), "history": self.history, "train_examples": len(data.train),
                   "steps": summary["end_step"], "train_seconds": summary["seconds"], "final_loss": summary["loss"],
                   "skipped_rows": data.skipped, "precision": self.precision, "device": str(self.device),
                   "interrupted": summary["interrupted"]}
        if s.data.predict_test and data.test and s.train.save_best:
            best_model = load_model_for_task(str(out / "best"), data.task, self.tokenizer).to(self.device)
            written = data.predict_test(best_model, self.device, self.precision, s.train.eval_batch_size,
                                        out / "submission", s.train.progress)
            results["test_files"] = [str(p) for p in written]
        write_json(out / "results.json", results, indent=2)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # finished: best/ holds the model
        return results


class FinetuneLoss:
    """The fine-tuning loss step (an `engine.loop.LossStep` whose loss is the mean over its micro-batch):
    the head's hard-label loss, optionally mixed with the teacher's soft targets (module docstring)."""

    INPUTS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, target_keys: tuple[str, ...], output_keys: tuple[str, ...], is_regression: bool, teacher,
                 distill: DistillSettings):
        # target_keys: the batch's targets, passed to the head (labels; SQuAD's start/end positions);
        # output_keys: the head's outputs the teacher's soft targets match (logits; start/end logits)
        self.target_keys, self.output_keys = target_keys, output_keys
        self.is_regression, self.teacher = is_regression, teacher
        self.T, self.alpha = distill.temperature, distill.alpha

    def denominators(self, batch: dict) -> dict:
        return {}  # a mean loss: the loop averages the micro-batches

    def soft(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        s, t, T = student_logits.float(), teacher_logits.float(), self.T
        if self.is_regression:
            return F.mse_loss(s, t)
        return F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T

    def __call__(self, model, batch: dict, totals: dict | None = None) -> tuple[torch.Tensor, dict]:
        x = {k: batch[k] for k in self.INPUTS}
        out = model(**x, **{k: batch[k] for k in self.target_keys})
        if self.teacher is None:
            return out.loss, {}
        with torch.no_grad():
            t_out = self.teacher(**x)
        # the mean over the outputs (SQuAD: start and end, as the official distillation averages them)
        s_loss = sum(self.soft(getattr(out, k), getattr(t_out, k)) for k in self.output_keys) / len(self.output_keys)
        alpha = self.alpha
        return alpha * s_loss + (1 - alpha) * out.loss, {"hard_loss": out.loss.detach(), "soft_loss": s_loss.detach()}


def make_loss_fn(kind: str, is_regression: bool, teacher, distill: DistillSettings) -> FinetuneLoss:
    """The loss step of a task of this kind (a task name or kind: "squad", "glue", "sst-2" ...) for
    `engine.train_loop`; the targets and outputs are the task class's own (tasks/base.py)."""
    from mobilebert.tasks.base import is_squad
    from mobilebert.tasks.qa import SquadTask
    from mobilebert.tasks.sentence import SentenceTask

    task = SquadTask if is_squad(kind) else SentenceTask
    return FinetuneLoss(task.target_keys, task.output_keys, is_regression, teacher, distill)


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
    from mobilebert.atomic import atomic_dir
    from mobilebert.tokenizer import tokenizer_config_json

    with atomic_dir(folder) as tmp:  # fsync'd, swapped in whole; a full disk is one line naming the folder
        D.unwrap(model).save_pretrained(tmp)
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
