"""How a run bridges its teacher and student (issue 11): decided once, before anything is written, from the
settings and the two configs; printed at the start of the run.

    teacher_heads    {"mlm", "nsp"} the teacher checkpoint really holds (a teacher trained in this run: both)
    layer_map        student layer l learns teacher layer m_l (distill/shapes.py)
    project          feature maps of different widths pass through learned projections
    copy_embeddings  GR's copy of embeddings and heads (IB-BERT/MobileBERT teacher of the student's shape)
    emb_stage        a first `emb` stage learns the embeddings instead (`kt.embedding_stage`; auto: when they
                     cannot be copied), its word embeddings from a truncated SVD of the teacher's (`svd_init`)
    pd_fmt_weight    x last-layer feature-map transfer in `pd` (`pd.fmt_weight`; auto: kt.fmt.weight when the
                     teacher has no MLM head, i.e. no logits to distil, else 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mobilebert.config import MobileBertConfig
from mobilebert.distill import shapes as SH
from mobilebert.recipes import train_teacher as TK
from mobilebert.distill import transfer as T


@dataclass
class Bridge:
    teacher_heads: dict = field(default_factory=lambda: {"mlm": True, "nsp": True})
    layer_map: list[int] = field(default_factory=list)
    project: bool = False
    copy_embeddings: bool = False
    emb_stage: bool = False
    svd_init: bool = False
    pd_fmt_weight: float = 0.0


def plan_bridge(s, t: MobileBertConfig | None, st: MobileBertConfig, data_tokens: list[str] | None = None,
                data_source: str = "") -> Bridge:
    """The bridge for settings `s` (`TrainSettings`); errors (ConfigError) name the key at fault."""
    b = Bridge(layer_map=list(range(1, st.num_hidden_layers + 1)))
    if t is None or not s.needs_teacher():
        return b
    kt = "kt" in s.run.stages and s.kt.strategy != "bare"
    if s.teacher.init and "teacher" not in s.run.stages:
        b.teacher_heads = TK.checkpoint_heads(s.teacher.init)
        if data_tokens:
            TK.check_vocab(s.teacher.init, data_tokens, data_source, t.vocab_size)
    if kt:
        b.layer_map = SH.layer_map(s.kt.layer_map, st.num_hidden_layers, t.num_hidden_layers)
    copyable, fresh = T.can_copy_embeddings(t, st), not s.student.init
    b.copy_embeddings = kt and s.kt.copy_from_teacher and copyable and fresh
    want = s.kt.embedding_stage
    b.emb_stage = kt and (want is True or (want == "auto" and not copyable and fresh))
    b.svd_init = b.emb_stage and fresh and t.vocab_size == st.vocab_size
    if s.pd.fmt_weight is not None:
        b.pd_fmt_weight = s.pd.fmt_weight
    elif "pd" in s.run.stages and s.pd.alpha < 1.0 and not b.teacher_heads["mlm"]:
        b.pd_fmt_weight = s.kt.fmt.weight  # no teacher logits: last-layer feature maps teach instead
    b.project = t.hidden_size != st.hidden_size and (kt or b.pd_fmt_weight > 0)
    return b


def describe(b: Bridge, s, t: MobileBertConfig | None, st: MobileBertConfig) -> list[str]:
    """The lines the run prints about its teacher and how it bridges the two models' shapes."""
    if t is None or not s.needs_teacher():
        return []
    src = "trained in this run" if "teacher" in s.run.stages else s.teacher.init
    lines = [f"teacher: {t.model_type}, {t.num_hidden_layers} layers, hidden {t.hidden_size}, "
             f"{t.num_attention_heads} heads ({src}); student: {st.num_hidden_layers} layers, hidden "
             f"{st.hidden_size}, {st.num_attention_heads} heads",
             TK.heads_line(b.teacher_heads, b.pd_fmt_weight, pd="pd" in s.run.stages, alpha=s.pd.alpha)]
    if ("kt" in s.run.stages and s.kt.strategy != "bare") or b.pd_fmt_weight > 0:
        lines.append("transfer input: " + ("the original tokens (kt.input=clean; MLM and NSP read the masked batch)"
                                           if s.kt.input == "clean" else "the MLM-masked batch (kt.input=masked, GR)"))
        if s.kt.cls_weight != 1.0:
            lines.append(f"[CLS] weight: the [CLS] position counts as {s.kt.cls_weight:g} tokens in the feature-map "
                         "and attention terms (kt.cls_weight; 1 in GR and the paper)")
    if "kt" not in s.run.stages or s.kt.strategy == "bare":
        return lines
    lines.append("layer map (student<-teacher): " + ", ".join(f"{l}<-{m}" for l, m in enumerate(b.layer_map, 1)))
    lines.append(f"feature maps: {st.hidden_size} -> {t.hidden_size} through learned projections (trained in KT, "
                 "not exported)" if b.project else f"feature maps: equal width {t.hidden_size}, compared directly")
    if s.kt.at.weight:
        ht, hs = t.num_attention_heads, st.num_attention_heads
        lines.append(f"attention: {ht} teacher / {hs} student heads" + (
            " compared one to one" if ht == hs else
            f", distributions averaged over groups of heads down to {min(ht, hs)}"))
    if b.copy_embeddings:
        emb = "copied from the teacher"
    elif b.emb_stage:
        emb = "learnt in the first stage `emb`" + (
            " (word embeddings from a truncated SVD of the teacher's)" if b.svd_init else "")
    else:
        emb = "not copied (kt.copy_from_teacher=false or student.init) and no emb stage"
    lines.append(f"embeddings: {emb}")
    return lines
