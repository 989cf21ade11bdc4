"""The MobileBERT training pipeline: teacher pre-training -> knowledge transfer -> pre-training distillation.

Paper §3.5 and §4; the stages of one run (any subset, in this order):
    teacher      IB-BERT (or any preset) pre-trained with MLM + NSP                     -> OUT/teacher
    kt           pkt: one stage per layer `pkt-1 .. pkt-L`; jkt: one stage `jkt`; akt: one stage `akt`
                 (layer losses + PD in one loss); bare: `bare` (MLM + NSP, no teacher). When the
                 embeddings cannot be copied from the teacher (a BERT teacher), a first stage `emb`
                 learns them (issue 11; distill/shapes.py and teacher.py bridge teachers of other shapes)
    pd           pre-training distillation `pd`                                         -> OUT/student
Every stage runs through the shared `engine.train_loop`, checkpoints every `run.save_every` steps and at
its end, and resumes mid-stage (`--resume`) from OUT/checkpoints/latest. Each stage draws its batches from
its own deterministic data stream (seed + stage index), and a fresh stage re-seeds torch, so a resumed
run repeats the uninterrupted run bit for bit on CPU.

The job, top to bottom, in the same shape as `mobilebert finetune` (recipes/finetune.py):
    settings in   `TrainSettings` (recipes/train_settings.py); `Pipeline(settings, resume)` checks the data,
                  the models, the plan and the memory before anything is written
    setup         the run folder, the corpus prepared into shards; per stage: the models, the optimizer
                  and its LR plan, the resumed state
    run           per stage, its loss step (recipes/train_stages.py, distill/steps.py) handed to the one
                  engine loop (`engine.loop.train_loop`)
    files         settings.yaml, data/ (prepared from data.corpus), teacher/, student/ (HF layout + vocab),
                  checkpoints/, metrics.jsonl, tensorboard/, loss_curves.png, summary.json
                  (recipes/train_state.py: checkpoints, resume, exports; train_report.py: the report)
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import time
import zlib
from pathlib import Path

import torch
import yaml

from mobilebert.checkpoint import load_pretrained
from mobilebert.config import MobileBertConfig
from mobilebert.distill import shapes as SH
from mobilebert.distill import steps as S
from mobilebert.distill import transfer as T
from mobilebert.engine import checkpoint as C
from mobilebert.engine import distributed as D
from mobilebert.engine.logging import MetricsLogger
from mobilebert.engine.loop import LoopConfig, train_loop
from mobilebert.engine.optim import build_optimizer, build_schedule
from mobilebert.errors import ConfigError, DataError
from mobilebert.heads import MobileBertForPreTraining
from mobilebert.recipes import estimate as E
from mobilebert.recipes import train_bridge as B
from mobilebert.recipes import train_state as ST
from mobilebert.recipes import train_teacher as TK
from mobilebert.recipes.settings import (check_device, check_precision, pick_precision, seed_everything, start_device,
                                         warmup_steps)
from mobilebert.recipes.train_settings import TrainSettings, check_models, model_configs
from mobilebert.recipes.train_stages import (Stage, check_stage_batches, format_plan, plan, stage_loss,
                                             stage_lr_scales)

# The settings a too-large stage names: (batch, accumulation, model), by stage kind.
MEMORY_HINTS = {"teacher": ("teacher.train.batch_size", "teacher.train.grad_accum", "teacher.preset"),
                "pd": ("pd.batch_size", "pd.grad_accum", "student.preset"),
                **{k: ("kt.batch_size", "kt.grad_accum", "student.preset") for k in ("pkt", "jkt", "akt", "bare")}}


class Pipeline:
    """`Pipeline(settings, resume).run()`; all checks happen in `__init__`, before anything is written."""

    def __init__(self, settings: TrainSettings, resume: bool = False, dry_run: bool = False):
        self.s, self.resume, self.dry_run = settings, resume, dry_run
        self.out = Path(settings.run.out)
        check_device("run.device", settings.run.device)
        check_precision("run.precision", settings.run.precision, "run.device", settings.run.device)
        self.device = start_device(settings.run.device)
        self.precision = pick_precision(settings.run.precision, self.device)
        if settings.run.threads:
            torch.set_num_threads(settings.run.threads)
        ST.check_out(settings, self.out, resume)
        try:
            self._check_data()
        except DataError as e:
            if not dry_run:
                raise
            print(f"note: {e} (ignored by --dry-run)")
            self.vocab_size = 0
        self.teacher_cfg, self.student_cfg = model_configs(settings, self.vocab_size)
        check_models(settings, self.teacher_cfg, self.student_cfg)
        self.bridge = B.plan_bridge(settings, self.teacher_cfg, self.student_cfg, getattr(self, "data_tokens", None),
                                    getattr(self, "data_vocab_source", ""))
        self.stages = plan(settings, self.student_cfg.num_hidden_layers, emb=self.bridge.emb_stage)
        for st in self.stages:
            if st.kind in ("emb", "pkt"):
                st.teacher_layer = self.bridge.layer_map[st.layer - 1] if st.layer else 0
        check_stage_batches(self.stages, D.world_size())
        self._check_memory()
        # Weights given by student.init / teacher.init are read now (a damaged file is refused before anything
        # is written) and kept for the stage that needs them.
        student_init = settings.student.init if {"kt", "pd"} & set(settings.run.stages) else None
        teacher_init = (str(TK.resolve_folder(settings.teacher.init))  # a sentence-transformers folder's model
                        if settings.teacher.init and self.teacher_cfg is not None else None)
        self._preloaded = {str(Path(p)): load_pretrained(MobileBertForPreTraining, p)
                           for p in (student_init, teacher_init) if p and not dry_run}
        self.teacher: MobileBertForPreTraining | None = None
        self.student: MobileBertForPreTraining | None = None
        self.proj: SH.Projections | None = None
        if self.bridge.project:  # created here, from its own seed, so a resumed run builds the same ones
            self.proj = SH.Projections(self.student_cfg.hidden_size, self.teacher_cfg.hidden_size,
                                       self.student_cfg.num_hidden_layers, seed=settings.run.seed).to(self.device)
        self.summaries: list[dict] = []
        D.barrier()  # every rank has checked the run folder before rank 0 writes into it

    def doubled(self) -> frozenset:
        """Stage kinds that run on the masked and the clean batch together (kt.input=clean where MLM is in the step:
        AKT, and the final stage when it transfers feature maps)."""
        if self.s.kt.input != "clean":
            return frozenset()
        return frozenset({"akt"} | ({"pd"} if self.bridge.pd_fmt_weight > 0 else set()))

    # ------------------------------------------------------------------ checks (nothing written)
    def _check_memory(self) -> None:
        """Refuse a run whose largest stage needs more memory than this machine has (unless run.allow_large)."""
        s = self.s
        self.memory = E.memory_estimate(self.stages, self.teacher_cfg, self.student_cfg, s.data.seq_len,
                                        s.data.max_predictions, self.precision, D.world_size(), self.doubled())
        if s.run.allow_large:
            return
        try:
            E.check_memory(self.memory, *E.available_memory(self.device), "run.allow_large", MEMORY_HINTS)
        except ConfigError as e:
            if not self.dry_run:
                raise
            print(f"note: {e} (--dry-run: a real run is refused)")

    def _check_data(self) -> None:
        from mobilebert.data.corpus import resolve_corpus
        from mobilebert.data.shards import ShardedCorpus, load_manifest
        from mobilebert.tokenizer import Tokenizer, TokenizerError

        d = self.s.data
        self.shards = Path(d.shards) if d.shards else self.out / "data"
        self.tokenizer, self.corpus_bytes = None, 0  # set when the corpus is still to be prepared
        if d.shards or (self.resume and (self.shards / "manifest.json").is_file()):
            manifest = load_manifest(self.shards)
            self.vocab_size = int(manifest["vocab_size"])
            self.data_tokens, self.data_vocab_source = manifest.get("vocab"), f"{self.shards}/manifest.json"
            ShardedCorpus(self.shards)  # a damaged shard is refused now, not at the first stage
            return
        try:
            sources, _ = resolve_corpus(d.corpus, d.skip_bad_files, exclude=[self.out])
        except DataError as e:
            raise DataError(str(e).replace("pass --skip-bad-files", "set data.skip_bad_files=true")) from None
        self.corpus_bytes = sum(src.size for src in sources)
        if all(src.hf is None and src.size == 0 for src in sources):
            raise ConfigError(f"data.corpus: {', '.join(d.corpus)} is empty (no text at all)")
        try:
            self.tokenizer = Tokenizer.from_file(d.vocab)
        except TokenizerError as e:
            raise ConfigError(f"data.vocab: {e}") from None
        self.vocab_size = self.tokenizer.backend.get_vocab_size()
        from mobilebert.data.shards import vocab_list
        self.data_tokens, self.data_vocab_source = vocab_list(self.tokenizer), f"data.vocab {d.vocab}"

    # ------------------------------------------------------------------ helpers
    def _data(self, stage_seed: int):
        from mobilebert.data import MaskingConfig, PretrainingData

        d = self.s.data
        masking = MaskingConfig(mask_prob=d.mask_prob, max_predictions=d.max_predictions, whole_word=d.whole_word,
                                short_seq_prob=d.short_seq_prob)
        return PretrainingData(self.shards, d.seq_len, masking=masking, seed=stage_seed)

    def _stage_seed(self, name: str) -> int:
        return self.s.run.seed * 1_000_003 + zlib.crc32(name.encode()) % 1_000_000

    def _new_model(self, cfg: MobileBertConfig, init: str | None) -> MobileBertForPreTraining:
        if init and str(Path(init)) in self._preloaded:
            return self._preloaded.pop(str(Path(init))).to(self.device)
        model = load_pretrained(MobileBertForPreTraining, init) if init else MobileBertForPreTraining(cfg)
        return model.to(self.device)

    def _load_teacher(self) -> None:
        src = self.out / "teacher" if "teacher" in self.s.run.stages else TK.resolve_folder(self.s.teacher.init)
        self.teacher = T.freeze(self._new_model(self.teacher_cfg, str(src)).eval())

    def _setup_student(self, stage: Stage) -> None:
        """The first student stage builds the student: fresh (+ teacher copy) or from student.init."""
        if self.student is not None:
            return
        self.student = self._new_model(self.student_cfg, self.s.student.init)
        if stage.kind in ("pkt", "jkt", "akt") and self.bridge.copy_embeddings:
            heads = self.bridge.teacher_heads
            skip = tuple(p for p, key in (("cls.predictions.", "mlm"), ("cls.seq_relationship.", "nsp")) if not heads[key])
            T.copy_from_teacher(self.teacher, self.student, skip)
        elif stage.kind == "emb" and self.bridge.svd_init:
            info = T.svd_init_embeddings(self.teacher, self.student)
            if D.is_main():
                print(f"emb: word embeddings from a rank-{info['rank']} SVD of the teacher's ({info['energy']:.1%} "
                      f"of their energy); also initialised: {', '.join(info['copied'][1:]) or 'nothing else'}",
                      flush=True)

    def _ensure_teacher(self) -> None:
        if self.teacher is None and self.s.needs_teacher():
            self._load_teacher()

    def initial_student(self) -> MobileBertForPreTraining:
        """The student exactly as this run builds it before its first step (fresh, student.init, or started from
        the teacher's copy or SVD), for analyses of what training changed (benchmarks/kt_weights.py). A run with a
        `teacher` stage reads its trained teacher from run.out/teacher."""
        first = next(st for st in self.stages if st.kind != "teacher")
        # the teacher before the seed: in the run it is already in memory when the student's random init draws
        # (trained by the teacher stage, or read in __init__), so reading it must not draw from that stream
        self._ensure_teacher()
        seed_everything(self._stage_seed(first.name))
        self._setup_student(first)
        return self.student

    # ------------------------------------------------------------------ one stage
    def _run_stage(self, stage: Stage, logger, start: int = 0, ckpt: Path | None = None) -> dict:
        """One stage: its models, optimizer and loss step, (resumed from `ckpt`,) through the engine loop."""
        s, L = self.s, self.student_cfg.num_hidden_layers
        if ckpt is None:
            seed_everything(self._stage_seed(stage.name))  # a fresh stage does not depend on history
        if stage.kind == "teacher":
            if self.teacher is None:
                init = str(TK.resolve_folder(s.teacher.init)) if s.teacher.init else None
                self.teacher = self._new_model(self.teacher_cfg, init)
            model = self.teacher.train()
        else:
            self._ensure_teacher()
            self._setup_student(stage)
            # GR builds the student with is_training=False under a teacher: no dropout in KT and PD.
            model = self.student.train(stage.kind == "bare")
        # The trained module: the model, plus the width projections in student stages (optimizer, DDP, checkpoints).
        proj = self.proj if stage.kind != "teacher" else None
        trained = S.Forward(model, proj)
        scale = stage_lr_scales(stage, s, L, proj is not None, self.bridge.pd_fmt_weight > 0)
        trainable, total = T.apply_plan(trained, scale)
        o = stage.train.optim
        opt = build_optimizer(trained, o.name, o.lr, o.weight_decay, eps=o.eps, lr_scale=scale)
        sched = build_schedule(opt, o.schedule, warmup_steps(o.warmup_steps, stage.train.steps, fraction=False),
                               stage.train.steps, o.end_lr_ratio)
        loop_state = None
        if ckpt is not None:
            state = C.load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched)
            loop_state = state["extra"].get("loop")
            self._load_projections(state, ckpt)
        fwd, teacher = D.wrap_ddp(trained), self.teacher
        if s.run.compile:
            # torch.compile the trained forward (through DDP) and, in KT/PD, the frozen teacher; the weights
            # stay in `model`, so checkpoints and exports are unchanged. It pays off on a GPU.
            fwd = torch.compile(fwd)
            if teacher is not None and teacher is not model:
                teacher = torch.compile(teacher)
        loss_fn = stage_loss(stage, s, teacher, self.bridge, L, self.student_cfg.num_attention_heads)
        data = self._data(self._stage_seed(stage.name))
        bs, rank, world = stage.train.batch_size, D.rank(), D.world_size()
        # this rank's slice of the global batch of `step`; built ahead in worker processes when data.workers > 0
        batch_fn = functools.partial(data.batch, batch_size=bs // world, rank=rank, world_size=world)
        batches = batch_fn
        if s.data.workers:
            from mobilebert.data.prefetch import StepPrefetcher

            batches = StepPrefetcher(batch_fn, start, stage.train.steps, s.data.workers,
                                     pin_memory=self.device.type == "cuda")
        checkpoint_fn = functools.partial(ST.save_stage, self.out, stage.name, model=model, optimizer=opt,
                                          scheduler=sched, proj=proj, settings=dataclasses.asdict(s), batch_size=bs,
                                          keep=s.run.keep_checkpoints)
        cfg = LoopConfig(max_steps=stage.train.steps, grad_accum=stage.train.grad_accum,
                         clip_grad_norm=o.clip_grad_norm or None, log_every=s.run.log_every,
                         save_every=s.run.save_every, precision=self.precision, stage=stage.name,
                         progress=s.run.progress)
        if logger is not None:
            logger.log_event("stage_start", stage=stage.name, step=start, trainable=trainable, params=total,
                             world_size=world, device=str(self.device))
        try:
            summary = train_loop(fwd, loss_fn, batches, opt, sched, cfg, logger=logger, start_step=start,
                                 checkpoint_fn=checkpoint_fn, loop_state=loop_state,
                                 desc=f"[{stage.index + 1}/{len(self.stages)}] {stage.name}")
        finally:
            if batches is not batch_fn:
                batches.close()
        summary.update(trainable_params=trainable, params=total)
        return summary

    # ------------------------------------------------------------------ the whole run
    def run(self) -> int:
        """`_run`; when a fresh run stops before its first checkpoint (an error, SIGTERM/SIGINT during set-up
        or the first step), its folder is removed again, so it never blocks the corrected command."""
        existed = self.out.is_dir()
        fresh = not self.resume and not (existed and any(self.out.iterdir()))
        try:
            return self._run()
        except BaseException:
            if fresh:
                ST.discard_fresh_run(self.out, existed)
            raise

    def _run(self) -> int:
        s, main = self.s, D.is_main()
        if main:
            print(yaml.safe_dump({"resolved settings": dataclasses.asdict(s)}, sort_keys=False).rstrip())
            rate = E.measure_matmul_flops(self.device)
            self.estimate = E.estimate(self.stages, self.teacher_cfg, self.student_cfg, s.data.seq_len,
                                       s.data.max_predictions / s.data.seq_len, rate, D.world_size(), self.device.type,
                                       self.doubled())
            print(format_plan(self.stages))
            print(E.format_estimate(self.estimate, rate, str(self.device)), flush=True)
            print(E.format_memory(self.memory), flush=True)
            for line in B.describe(self.bridge, s, self.teacher_cfg, self.student_cfg):
                print(line, flush=True)
        if self.dry_run:
            return 0
        if main:  # settings.yaml, then the corpus prepared into OUT/data (unless it is there already)
            ST.start_run_folder(self.out, dataclasses.asdict(s), s.data, self.shards, self.tokenizer, self.corpus_bytes)
        D.barrier()
        latest, meta, first = ST.resume_point(self.out, self.resume, [st.name for st in self.stages])
        logger = MetricsLogger(self.out, enabled=main, tensorboard=s.run.tensorboard,
                               resume_from=(meta["stage"], meta["step"]) if meta else None)
        t0 = time.time()
        try:
            for st in self.stages[first:]:
                resuming = meta is not None and st.name == meta["stage"]
                if resuming and meta["step"] >= st.train.steps:  # the checkpoint ends this stage
                    self._restore_finished(st, latest)
                else:
                    summ = self._run_stage(st, logger, meta["step"] if resuming else 0, latest if resuming else None)
                    self.summaries.append(summ)
                    if summ["interrupted"]:
                        name = signal.Signals(summ["interrupted"]).name
                        logger.log_event("interrupted", stage=st.name, step=summ["end_step"], signal=name)
                        if main:
                            print(f"\n{name}: saved {st.name} step {summ['end_step']} in {self.out}/checkpoints; "
                                  f"continue with: mobilebert train CONFIG --resume --out {self.out}", flush=True)
                        return 128 + summ["interrupted"]
                if st.kind == "teacher":
                    ST.export_model(self.teacher, self.out, "teacher", self.shards)
                    self._load_teacher()  # later stages read the exported teacher, as a resumed run does
            if self.student is not None:
                ST.export_model(self.student, self.out, "student", self.shards)
            if main:
                from mobilebert.recipes.train_report import write_report
                write_report(self, time.time() - t0)
            return 0
        finally:
            logger.close()

    def _restore_finished(self, st: Stage, ckpt: Path) -> None:
        """Resume exactly at a stage boundary: take the model the finished stage saved."""
        if st.kind == "teacher":
            self.teacher = self._new_model(self.teacher_cfg, None)
            C.load_model_weights(self.teacher, ckpt)
            return
        self._ensure_teacher()
        self.student = self._new_model(self.student_cfg, None)
        C.load_model_weights(self.student, ckpt)
        if self.proj is not None:
            self._load_projections(C.load_checkpoint(ckpt, restore_rng=False), ckpt)

    def _load_projections(self, state: dict, ckpt: Path) -> None:
        if self.proj is not None:
            ST.load_projections(self.proj, state, ckpt, (self.student_cfg.hidden_size, self.teacher_cfg.hidden_size))


def train_from_config(config: str | None, overrides: list[str], out: str | None = None, resume: bool = False,
                      dry_run: bool = False) -> int:
    """The `mobilebert train` job: settings from `config` + dotted `overrides` (`out` is run.out; with no config,
    `resume` re-reads OUT/settings.yaml), then the pipeline; returns the exit status."""
    from mobilebert.recipes.settings import load_settings

    overrides = list(overrides) + ([f"run.out={out}"] if out else [])
    if config is None:
        # `mobilebert train --resume --out DIR` re-reads the run's own settings.
        if not (resume and out):
            raise ConfigError("give a config file (for example configs/quickstart.yaml), "
                              "or --resume --out DIR to continue a run")
        config = str(Path(out) / "settings.yaml")
        if not Path(config).is_file():
            raise ConfigError(f"run.out: {out} holds no run to resume (no settings.yaml)")
    settings = load_settings(TrainSettings, config, overrides)
    try:
        return Pipeline(settings, resume=resume, dry_run=dry_run).run()
    finally:
        D.cleanup()
