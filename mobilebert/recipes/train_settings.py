"""Settings of `mobilebert train`: one YAML file describes teacher pre-training, knowledge transfer and
pre-training distillation (paper §4; the official run's flags are in configs/paper-full.yaml).

The YAML maps 1:1 onto these dataclasses; `mobilebert.recipes.settings.load_settings` applies dotted overrides
(`kt.strategy=jkt pd.steps=100`) and rejects unknown keys with the key's name. `validate()` methods check
values that a type cannot express; `model_configs()` resolves the teacher's and the student's model configs
(presets, checkpoints, or the student shaped from the teacher) and `check_models()` checks that they fit the
chosen losses. All of it runs before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mobilebert.config import MobileBertConfig
from mobilebert.errors import ConfigError
from mobilebert.recipes.settings import (check_batch, check_lr, check_non_negative, check_positive, check_positive_int,
                                 check_seq_len, check_warmup)

STRATEGIES = ("pkt", "jkt", "akt", "bare")
STAGES = ("teacher", "kt", "pd")


@dataclass
class OptimSettings:
    name: Literal["lamb", "adamw"] = "lamb"
    lr: float = 1.5e-3
    weight_decay: float = 0.01
    schedule: Literal["linear", "constant", "pkt_official"] = "linear"
    warmup_steps: int = 0             # a step count (finetune's `optim.warmup` is a fraction; both kept for
                                      # compatibility, resolved by settings.warmup_steps)
    end_lr_ratio: float = 1e-4        # linear decay ends at lr * end_lr_ratio (GR default)
    clip_grad_norm: float = 1.0       # global-norm clipping (GR: 1.0); 0 disables
    eps: float = 1e-6

    def check(self, key: str):
        check_lr(f"{key}.lr", self.lr)
        check_warmup(f"{key}.warmup_steps", self.warmup_steps, fraction=False)
        for name in ("weight_decay", "clip_grad_norm", "end_lr_ratio", "eps"):
            check_non_negative(f"{key}.{name}", getattr(self, name))


@dataclass
class KtOptimSettings(OptimSettings):
    # auto: pkt_official for pkt (GR: constant LR x the per-stage background), linear (warm-up + decay over
    # kt.steps, BERT's schedule) for jkt, akt and bare. `kt_schedule()` resolves it.
    schedule: Literal["auto", "linear", "constant", "pkt_official"] = "auto"


@dataclass
class PdOptimSettings(OptimSettings):
    warmup_steps: int = 10_000


@dataclass
class StageSettings:
    """Steps, batch and optimizer of one stage (for PKT: of each of its per-layer stages)."""
    steps: int = 1000
    batch_size: int = 32              # global batch: split over ranks, then over grad_accum micro-batches
    grad_accum: int = 1
    optim: OptimSettings = field(default_factory=OptimSettings)

    def check(self, key: str):
        check_positive_int(f"{key}.steps", self.steps)
        check_batch(f"{key}.batch_size", self.batch_size, f"{key}.grad_accum", self.grad_accum)
        self.optim.check(f"{key}.optim")


@dataclass
class ModelSettings:
    preset: str = "mobilebert"
    overrides: dict = field(default_factory=dict)   # MobileBertConfig fields, e.g. {num_hidden_layers: 4}
    init: str | None = None          # an existing checkpoint folder (HF layout): use it instead of training it


@dataclass
class TeacherTrainSettings(StageSettings):
    steps: int = 500_000              # third-party summaries of the paper (UNVERIFIED): 500k steps at 4096
    batch_size: int = 4096


@dataclass
class TeacherSettings(ModelSettings):
    preset: str = "ibbert-large"
    train: TeacherTrainSettings = field(default_factory=TeacherTrainSettings)


@dataclass
class FmtSettings:
    weight: float = 100.0             # GR hidden_distill_factor
    standardize: bool = True          # GR: MSE of non-affine LayerNorm'd maps; false: eq. 2 plain MSE
    mask_padding: bool = False        # GR averages over padding too


@dataclass
class AtSettings:
    weight: float = 1.0               # GR attention_distill_factor
    kind: Literal["ce", "kl"] = "ce"  # ce: GR cross-entropy on scores; kl: eq. 3 per-head KL
    mask_padding: bool = False


@dataclass
class MeanVarSettings:
    beta: float = 5000.0              # GR beta_distill_factor (mean term); 0 disables
    gamma: float = 5.0                # GR gamma_distill_factor (variance term); 0 disables
    all_layer_teacher_stats: bool = False  # reproduce GR's bug (teacher statistics over all layers)


@dataclass
class KtSettings(StageSettings):
    """Knowledge transfer. `steps` is the total for every strategy (equal compute): PKT splits it evenly over
    its stages (`pipeline.plan` prints the split); JKT, AKT and bare run it as one stage."""
    strategy: Literal["pkt", "jkt", "akt", "bare"] = "pkt"
    lower_layers: Literal["reduced_lr", "freeze"] = "reduced_lr"  # PKT: GR trains lower layers at 0.1x
    active_lr_scale: float = 3.0      # GR: the active layer runs at 3x the background LR
    lower_lr_scale: float = 0.3       # GR: layers below at 0.3x (= 0.1 x 3x); used with reduced_lr
    copy_from_teacher: bool = True    # embeddings and heads copied from the teacher, frozen in KT
    layer_map: list[int] | None = None  # student layer l learns teacher layer m_l (1-based); null: uniform
    embedding_stage: bool | Literal["auto"] = "auto"  # a first `emb` stage; auto: when embeddings cannot be copied
    # The tokens the transfer terms (and the final stage's feature maps) read: GR's MLM-masked batch, or the
    # original text (TinyBERT, MiniLM): for a teacher that never saw [MASK], e.g. a sentence-transformers BERT.
    input: Literal["masked", "clean"] = "masked"
    # The [CLS] position counts as this many tokens in the feature-map and attention terms (and the final stage's
    # feature maps). 1: as GR and the paper. Not in the paper: a sentence-level teacher's [CLS] carries the sentence
    # but is 1 position of seq_len, so its share of the transfer loss is ~1/seq_len.
    cls_weight: float = 1.0
    fmt: FmtSettings = field(default_factory=FmtSettings)
    at: AtSettings = field(default_factory=AtSettings)
    mean_var: MeanVarSettings = field(default_factory=MeanVarSettings)
    steps: int = 240_000              # GR --num_distill_steps (24 PKT stages x 10k)
    batch_size: int = 2048
    optim: KtOptimSettings = field(default_factory=KtOptimSettings)


@dataclass
class PdSettings(StageSettings):
    alpha: float = 0.5                # eq. 4; GR distill_ground_truth_ratio (1.0 drops the teacher)
    temperature: float = 1.0
    # x last-layer feature-map transfer in PD. null (auto): kt.fmt.weight when the teacher has no MLM head
    # (no logits to distil), else 0; a number applies always, with or without teacher logits.
    fmt_weight: float | None = None
    steps: int = 500_000
    batch_size: int = 2048
    optim: PdOptimSettings = field(default_factory=PdOptimSettings)

    def check(self, key: str):
        super().check(key)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{key}.alpha: must be in [0, 1], got {self.alpha}")
        check_positive(f"{key}.temperature", self.temperature)
        if self.fmt_weight is not None:
            check_non_negative(f"{key}.fmt_weight", self.fmt_weight)


@dataclass
class DataSettings:
    corpus: list[str] | str = field(default_factory=list)  # raw text (files, folders, globs): prepared into OUT/data
    shards: str | None = None         # or an already prepared folder (`mobilebert data prepare`)
    vocab: str = "../shared/data/bert-base-uncased/vocab.txt"
    seq_len: int = 128
    max_predictions: int = 20
    mask_prob: float = 0.15           # BERT: 15% of the tokens, at most max_predictions per sequence
    whole_word: bool = False
    short_seq_prob: float = 0.1
    skip_bad_files: bool = False      # skip binary files in the corpus instead of stopping
    eval_batches: int = 4             # held-out batches for the final MLM/NSP report (0: none)
    sts_dev: str | None = None        # an STS-B-format dev file (GLUE STS-B/dev.tsv): the report scores teacher,
                                      # student and an untrained student zero-shot on it (mean-pooled states)
    workers: int = 0                  # processes building batches ahead (GPU: 2-8); 0 builds them in-process.
                                      # The batches are the same either way (a pure function of the step)

    def check(self, key: str = "data"):
        if isinstance(self.corpus, str):  # `data.corpus=PATH` on the command line
            self.corpus = [self.corpus]
        if bool(self.corpus) == bool(self.shards):
            raise ConfigError(f"{key}: give exactly one of {key}.corpus (raw text) or {key}.shards (prepared folder)")
        if self.seq_len < 8:
            raise ConfigError(f"{key}.seq_len: must be at least 8, got {self.seq_len}")
        if self.max_predictions < 1:
            raise ConfigError(f"{key}.max_predictions: must be positive, got {self.max_predictions}")
        if not 0 < self.mask_prob < 1:
            raise ConfigError(f"{key}.mask_prob: must be in (0, 1), got {self.mask_prob}")
        if self.workers < 0:
            raise ConfigError(f"{key}.workers: must be >= 0, got {self.workers}")
        if not 0 <= self.short_seq_prob <= 1:
            raise ConfigError(f"{key}.short_seq_prob: must be in [0, 1], got {self.short_seq_prob}")
        if self.sts_dev is not None and not Path(self.sts_dev).is_file():
            raise ConfigError(f"{key}.sts_dev: {self.sts_dev} is not a file (an STS-B-format dev.tsv)")


@dataclass
class RunSettings:
    out: str = "runs/mobilebert"
    stages: list[str] = field(default_factory=lambda: ["teacher", "kt", "pd"])
    # seed, device and precision live under `run.` here and under `train.` in finetune (which also has
    # precision `auto`), kept for compatibility; both are picked by settings.seed_everything, start_device, pick_precision
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    log_every: int = 10
    save_every: int = 1000            # checkpoint every N steps of a stage (and always at its end)
    keep_checkpoints: int = 3
    threads: int = 0                  # torch.set_num_threads; 0 leaves the default
    compile: bool = False             # torch.compile the forward passes (GPU speed; same numbers up to rounding)
    progress: bool = True
    tensorboard: bool = True
    allow_large: bool = False         # start even when the memory estimate exceeds this machine's memory

    def check(self, key: str = "run"):
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ConfigError(f"{key}.stages: {bad or self.stages} must be a non-empty subset of {', '.join(STAGES)}")
        if sorted(self.stages, key=STAGES.index) != list(self.stages) or len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"{key}.stages: list each stage once, in the order {', '.join(STAGES)}")
        for name, low in (("log_every", 1), ("save_every", 0), ("keep_checkpoints", 1), ("threads", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"{key}.{name}: must be >= {low}, got {getattr(self, name)}")


@dataclass
class TrainSettings:
    run: RunSettings = field(default_factory=RunSettings)
    data: DataSettings = field(default_factory=lambda: DataSettings(corpus=["../shared/data/corpus"]))
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    student: ModelSettings = field(default_factory=ModelSettings)
    kt: KtSettings = field(default_factory=KtSettings)
    pd: PdSettings = field(default_factory=PdSettings)

    def validate(self):
        self.run.check("run")
        self.data.check("data")
        self.teacher.train.check("teacher.train")
        self.kt.check("kt")
        self.pd.check("pd")
        for key, w in (("kt.fmt.weight", self.kt.fmt.weight), ("kt.at.weight", self.kt.at.weight),
                       ("kt.mean_var.beta", self.kt.mean_var.beta), ("kt.mean_var.gamma", self.kt.mean_var.gamma),
                       ("kt.cls_weight", self.kt.cls_weight)):
            check_non_negative(key, w)
        stages = self.run.stages
        if self.kt.strategy == "bare" and "pd" in stages:
            raise ConfigError("run.stages: pd needs a teacher, but kt.strategy=bare trains the student without one")
        if "teacher" not in stages and self.needs_teacher() and not self.teacher.init:
            raise ConfigError("teacher.init: the stages need a teacher; add `teacher` to run.stages or give "
                              "teacher.init (a trained teacher folder)")
        if "pd" in stages and "kt" not in stages and not self.student.init:
            raise ConfigError("student.init: pd without kt starts from a student folder; give student.init")

    def needs_teacher(self) -> bool:
        kt = "kt" in self.run.stages and self.kt.strategy != "bare"
        pd = "pd" in self.run.stages and (self.pd.alpha < 1.0 or bool(self.pd.fmt_weight))
        return kt or pd


def kt_schedule(kt: KtSettings) -> str:
    """The KT optimizer schedule with `auto` resolved: pkt_official for pkt, linear for jkt/akt/bare."""
    if kt.optim.schedule != "auto":
        return kt.optim.schedule
    return "pkt_official" if kt.strategy == "pkt" else "linear"


def split_steps(total: int, stages: int, key: str = "kt.steps") -> list[int]:
    """`total` steps over `stages` stages, as evenly as possible (the first ones take the remainder)."""
    if total < stages:
        raise ConfigError(f"{key}: {total} steps cannot be split over {stages} stages (one step each at least); "
                          f"{key} is the total over all stages")
    base, extra = divmod(total, stages)
    return [base + (i < extra) for i in range(stages)]


def build_model_config(ms: ModelSettings, key: str, max_len: int) -> MobileBertConfig:
    """The preset with overrides; errors name `teacher.` / `student.` keys."""
    from mobilebert.presets import get_config
    try:
        cfg = get_config(ms.preset, **ms.overrides)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(f"{key}.preset: {msg}" if msg.startswith("unknown preset") else f"{key}.overrides.{msg}") \
            from None
    check_seq_len("data.seq_len", max_len, cfg.max_position_embeddings, key)
    return cfg


def model_configs(s: TrainSettings, vocab_size: int) -> tuple[MobileBertConfig | None, MobileBertConfig]:
    """(teacher, student) configs of a run: the teacher's from teacher.init or its preset (None when no stage needs
    a teacher), the student's from student.init, its preset, or shaped from the teacher (`student.preset:
    from-teacher`); each checked against data.seq_len and the data's vocabulary of `vocab_size` tokens (0: unknown)."""
    from mobilebert.checkpoint import load_config
    from mobilebert.distill import shapes
    from mobilebert.recipes.train_teacher import teacher_config

    seq = s.data.seq_len
    from_teacher = s.student.preset == shapes.FROM_TEACHER and not s.student.init
    teacher = None
    if s.needs_teacher() or "teacher" in s.run.stages or from_teacher:
        if not (s.teacher.init or "teacher" in s.run.stages):
            raise ConfigError(f"student.preset: {shapes.FROM_TEACHER} is shaped from the teacher; give teacher.init "
                              "or add `teacher` to run.stages")
        teacher = teacher_config(s.teacher.init) if s.teacher.init else build_model_config(s.teacher, "teacher", seq)
    if from_teacher:
        student = shapes.from_teacher_config(teacher, s.student.overrides)
    else:
        student = load_config(s.student.init) if s.student.init else build_model_config(s.student, "student", seq)
    for key, cfg in (("student", student), ("teacher", teacher)):
        if cfg is not None:  # checkpoints' and shaped-from-teacher configs too (presets are checked when built)
            check_seq_len("data.seq_len", seq, cfg.max_position_embeddings, key)
        if cfg is not None and cfg.vocab_size < vocab_size:
            raise ConfigError(f"{key}.overrides.vocab_size: {cfg.vocab_size} is smaller than the data's "
                              f"vocabulary ({vocab_size} tokens)")
    return teacher, student


def check_models(s: TrainSettings, teacher: MobileBertConfig, student: MobileBertConfig) -> None:
    """Teacher and student must fit the chosen losses. Different depths, widths and head counts are bridged
    (distill/shapes.py: layer map, projections, head grouping); embeddings that cannot be copied are learnt
    in the `emb` stage. What remains an error: different vocabularies, a student that is not MobileBERT-style,
    a bad layer map, head counts that cannot be grouped."""
    if not s.needs_teacher():
        return
    from mobilebert.distill import shapes

    kt = "kt" in s.run.stages and s.kt.strategy != "bare"
    if teacher.vocab_size != student.vocab_size:
        raise ConfigError(f"teacher/student vocab_size: {teacher.vocab_size} != {student.vocab_size}; distillation "
                          "compares the two models' vocabulary distributions")
    if student.model_type != "mobilebert":
        raise ConfigError("student model_type: knowledge transfer trains MobileBERT/IB-BERT-style students "
                          "(student.preset: mobilebert, from-teacher, ...)")
    if kt:
        shapes.layer_map(s.kt.layer_map, student.num_hidden_layers, teacher.num_hidden_layers)
        if s.kt.at.weight:
            shapes.check_head_grouping(teacher.num_attention_heads, student.num_attention_heads)
