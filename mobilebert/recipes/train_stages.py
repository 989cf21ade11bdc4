"""The stages of `mobilebert train` (paper §3.5, §4): the plan of a run and the loss step of each stage.

    plan         teacher -> [emb] -> pkt-1 .. pkt-L | jkt | akt | bare -> pd, with the KT steps split for
                 equal compute (PKT's layer stages share `kt.steps`; an `emb` stage takes one share more)
    format_plan  the plan as printed at the start of a run
    check_stage_batches  each stage's global batch splits over the ranks and its micro-batches
    stage_lr_scales      per-parameter LR multiples of a stage (PKT's active and lower layers, projections)
    stage_loss   the `engine.loop.LossStep` of a stage (distill/steps.py): MLM + NSP for the teacher and the
                 `bare` baseline, layer-wise transfer for emb/pkt/jkt/akt (akt adds PD), distillation for pd
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mobilebert.distill import steps as S
from mobilebert.distill import transfer as T
from mobilebert.errors import ConfigError
from mobilebert.recipes.train_bridge import Bridge
from mobilebert.recipes.train_settings import StageSettings, TrainSettings, kt_schedule, split_steps


@dataclass
class Stage:
    name: str                 # teacher | emb | pkt-<l> | jkt | akt | bare | pd
    kind: str                 # teacher | emb | pkt | jkt | akt | bare | pd
    train: StageSettings
    index: int
    layer: int | None = None  # PKT: 1-based layer this stage trains (emb: 0, the embedding output)
    teacher_layer: int | None = None  # the teacher layer it learns from (the layer map's m_l)


def plan(s: TrainSettings, num_layers: int, emb: bool = False) -> list[Stage]:
    """The stages of the run. KT stages get `kt.steps` in total whatever the strategy (equal compute): PKT's
    layer stages split it evenly, and an `emb` stage (a teacher whose embeddings cannot be copied) takes one
    share more of it; the KT schedule `auto` is resolved here (`kt_schedule`)."""
    out: list[Stage] = []
    add = lambda name, kind, train, layer=None: out.append(Stage(name, kind, train, len(out), layer))
    if "teacher" in s.run.stages:
        add("teacher", "teacher", s.teacher.train)
    if "kt" in s.run.stages:
        optim = dataclasses.replace(s.kt.optim, schedule=kt_schedule(s.kt))
        # the emb stage's share of the total: the same as one PKT layer stage, for every strategy
        shares = split_steps(s.kt.steps, num_layers + 1) if emb else None
        if emb:
            add("emb", "emb", dataclasses.replace(s.kt, steps=shares[0], optim=optim), 0)
        kt_steps = s.kt.steps - shares[0] if emb else s.kt.steps
        if s.kt.strategy == "pkt":
            for l, steps in enumerate(split_steps(kt_steps, num_layers), 1):
                add(f"pkt-{l}", "pkt", dataclasses.replace(s.kt, steps=steps, optim=optim), l)
        else:
            add(s.kt.strategy, s.kt.strategy, dataclasses.replace(s.kt, steps=kt_steps, optim=optim))
    if "pd" in s.run.stages:
        add("pd", "pd", s.pd)
    return out


def format_plan(stages: list[Stage]) -> str:
    """One line per run of equal stages, e.g. `pkt-1 .. pkt-24: 10,000 steps each (240,000), pkt_official`."""
    lines, i = ["plan:"], 0
    while i < len(stages):
        st, j = stages[i], i + 1
        while (j < len(stages) and stages[j].kind == st.kind and stages[j].train.steps == st.train.steps
               and st.kind == "pkt"):
            j += 1
        name = st.name if j == i + 1 else f"{st.name} .. {stages[j - 1].name}"
        each = f"{st.train.steps:,} steps" + (f" each ({st.train.steps * (j - i):,})" if j > i + 1 else "")
        lines.append(f"  {name:<20} {each}, batch {st.train.batch_size}, {st.train.optim.schedule} schedule")
        i = j
    return "\n".join(lines)


def check_stage_batches(stages: list[Stage], world: int) -> None:
    """A stage's global batch is split over `world` ranks, then into grad_accum micro-batches."""
    for st in stages:
        if st.train.batch_size % (world * st.train.grad_accum):
            key = "teacher.train" if st.kind == "teacher" else ("pd" if st.kind == "pd" else "kt")
            raise ConfigError(f"{key}.batch_size: {st.train.batch_size} is not divisible by world size "
                              f"{world} x grad_accum {st.train.grad_accum}")


def stage_lr_scales(stage: Stage, s: TrainSettings, num_layers: int, projections: bool, pd_fmt: bool) -> dict:
    """Per-parameter LR multiples of the stage's trained module (`S.Forward`): the layer plan of distill/transfer.py
    (PKT's active layer, lower layers reduced or frozen) and the width projections' share of it."""
    scale = T.stage_plan(stage.kind, num_layers, stage.layer, s.kt.lower_layers, s.kt.active_lr_scale,
                         s.kt.lower_lr_scale)
    kt_maps = bool(s.kt.fmt.weight or s.kt.mean_var.beta or s.kt.mean_var.gamma)
    proj_scales = (T.projection_scales(stage.kind, num_layers, stage.layer, s.kt.active_lr_scale, pd_fmt, kt_maps)
                   if projections else {})
    return T.forward_plan(scale, proj_scales)


def stage_loss(stage: Stage, s: TrainSettings, teacher, bridge: Bridge, num_layers: int, student_heads: int):
    """The stage's `LossStep` (global-normalised: each has `denominators`); `teacher` is the frozen teacher (None
    in the teacher stage and `bare`), possibly compiled."""
    L = num_layers
    logits = bridge.teacher_heads["mlm"]
    if stage.kind in ("teacher", "bare"):
        return S.MlmNspLoss()
    if stage.kind == "pd":
        return S.DistillationLoss(teacher, s.pd.alpha, s.pd.temperature, teacher_logits=logits,
                                  fmt_weight=bridge.pd_fmt_weight, fmt_layers=(L, bridge.layer_map[-1]),
                                  fmt_standardize=s.kt.fmt.standardize, fmt_mask_padding=s.kt.fmt.mask_padding,
                                  clean_input=s.kt.input == "clean", cls_weight=s.kt.cls_weight)
    pd = (S.DistillationLoss(teacher, s.pd.alpha, s.pd.temperature, teacher_logits=logits)
          if stage.kind == "akt" else None)
    layers = [stage.layer] if stage.kind in ("pkt", "emb") else list(range(1, L + 1))
    depth = stage.layer if stage.kind in ("pkt", "emb") else None
    return S.TransferLoss(teacher, s.kt, layers, L, depth, pd, layer_map=bridge.layer_map, student_heads=student_heads)
