"""Knowledge transfer between a teacher and a student of different shapes (issue 11; paper §3.3-3.5 sizes the
student to its teacher, this module lifts that restriction).

    from_teacher_config  MobileBERT's design (128-d trigram embedding, bottlenecks at a quarter of the
                         inter-block width, 4 stacked FFNs, NoNorm, ReLU, shared Q/K bottleneck) with the
                         teacher's inter-block width, head count, vocabulary and depth (`student.preset:
                         from-teacher`), as the paper derives MobileBERT from IB-BERT.
    layer_map            student layer l (1-based) learns teacher layer m_l: uniform m_l = round(l Lt / Ls)
                         (half up; identity when the depths match) or the list in `kt.layer_map`.
    group_heads          attention distributions averaged over groups of heads, down to the smaller head
                         count; returned as log-probabilities so the existing AT losses take them as scores.
    Projections          learned Linear(student width -> teacher width) maps, one per student hidden state
                         (index 0 = embedding output, l = layer l), used by FMT and the mean/variance terms
                         when the widths differ. They belong to the training run (optimizer, DDP, training
                         checkpoints), never to the exported student.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mobilebert.config import MobileBertConfig
from mobilebert.errors import ConfigError

FROM_TEACHER = "from-teacher"
EMBEDDING_SIZE = 128  # MobileBERT's factorised word-embedding width


def from_teacher_config(teacher: MobileBertConfig, overrides: dict | None = None,
                        key: str = "student") -> MobileBertConfig:
    """The MobileBERT-design student sized from `teacher` (then `overrides` on top; errors name `key`).

    Widths: hidden_size (inter-block, the feature-map width) = teacher hidden_size; intra_bottleneck_size
    = hidden/4; intermediate_size = hidden (4 x the bottleneck, as 512 = 4 x 128 in MobileBERT)."""
    h = teacher.hidden_size
    if h % 4:
        raise ConfigError(f"{key}.preset: {FROM_TEACHER} puts the bottleneck at a quarter of the teacher's "
                          f"hidden_size={h}, which is not divisible by 4; set {key}.overrides.intra_bottleneck_size")
    base = dict(vocab_size=teacher.vocab_size, embedding_size=EMBEDDING_SIZE, hidden_size=h,
                num_hidden_layers=teacher.num_hidden_layers, num_attention_heads=teacher.num_attention_heads,
                intermediate_size=h, hidden_act="relu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.1,
                max_position_embeddings=teacher.max_position_embeddings, type_vocab_size=teacher.type_vocab_size,
                pad_token_id=teacher.pad_token_id, trigram_input=True, use_bottleneck=True,
                intra_bottleneck_size=h // 4, use_bottleneck_attention=False, key_query_shared_bottleneck=True,
                num_feedforward_networks=4, normalization_type="no_norm", classifier_activation=False,
                model_type="mobilebert")
    kw = {**base, **(overrides or {})}
    names = set(MobileBertConfig.__dataclass_fields__)
    for name in kw:
        if name not in names:
            raise ConfigError(f"{key}.overrides.{name}: unknown model setting")
    try:
        cfg = MobileBertConfig(**kw)
    except ConfigError as e:
        raise ConfigError(f"{key}.overrides.{e} ({key}.preset {FROM_TEACHER}: bottleneck hidden/4="
                          f"{kw['intra_bottleneck_size']}, the teacher's {teacher.num_attention_heads} heads)"
                          ) from None
    if cfg.embedding_size >= cfg.hidden_size:
        # The MLM head scores with [E (embedding_size) ; extra (hidden - embedding_size)] (heads.py).
        raise ConfigError(f"{key}.overrides.embedding_size: {cfg.embedding_size} must be smaller than hidden_size="
                          f"{cfg.hidden_size} (the teacher's width)")
    return cfg


# ------------------------------------------------------------------------------------------ layer map
def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """m_l = round(l * Lt / Ls), halves rounded up, for l = 1..Ls (1-based teacher layers)."""
    return [(2 * l * teacher_layers + student_layers) // (2 * student_layers) for l in range(1, student_layers + 1)]


def layer_map(given: list[int] | None, student_layers: int, teacher_layers: int) -> list[int]:
    """The checked map [m_1, ..., m_Ls]: strictly increasing, in 1..Lt. Errors name `kt.layer_map`."""
    if given is None:
        if student_layers > teacher_layers:
            raise ConfigError(f"kt.layer_map: the student has {student_layers} layers, the teacher only "
                              f"{teacher_layers}; layer-wise transfer needs a strictly increasing map, so the "
                              f"student cannot be deeper (set student.overrides.num_hidden_layers <= {teacher_layers})")
        return uniform_layer_map(student_layers, teacher_layers)
    m = list(given) if isinstance(given, (list, tuple)) else None
    if m is None or not all(isinstance(x, int) and not isinstance(x, bool) for x in m):
        raise ConfigError(f"kt.layer_map: must be a list of teacher layer numbers (1-based), got {given!r}")
    if len(m) != student_layers:
        raise ConfigError(f"kt.layer_map: has {len(m)} entries but the student has {student_layers} layers "
                          "(one teacher layer per student layer)")
    for i, x in enumerate(m):
        if not 1 <= x <= teacher_layers:
            raise ConfigError(f"kt.layer_map: entry {i + 1} is {x}, outside the teacher's layers 1..{teacher_layers}")
        if i and x <= m[i - 1]:
            raise ConfigError(f"kt.layer_map: must be strictly increasing, but entry {i + 1} ({x}) follows {m[i - 1]}")
    return m


# ------------------------------------------------------------------------------------------ heads
def check_head_grouping(teacher_heads: int, student_heads: int) -> int:
    """The common head count min(Ht, Hs); the larger must be a multiple of the smaller."""
    hi, lo = max(teacher_heads, student_heads), min(teacher_heads, student_heads)
    if hi % lo:
        raise ConfigError(f"num_attention_heads: teacher {teacher_heads} and student {student_heads} heads cannot be "
                          f"grouped for attention transfer (one must be a multiple of the other); change "
                          f"student.overrides.num_attention_heads or set kt.at.weight=0")
    return lo


def group_heads(scores: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, A, S, S) masked pre-softmax scores -> (B, heads, S, S) log of the attention probabilities averaged
    over groups of A/heads consecutive heads. Computed as logsumexp(log_softmax) - log g, so keys whose
    probability underflows stay finite (or -inf where masked with -inf) instead of log(0)."""
    B, A, S, _ = scores.shape
    g = A // heads
    logp = torch.log_softmax(scores.float(), -1).view(B, heads, g, S, S)
    return torch.logsumexp(logp, dim=2) - math.log(g)


# ------------------------------------------------------------------------------------------ projections
class Projections(nn.Module):
    """One Linear(student_width -> teacher_width) per student hidden state 0..num_layers (0 = embeddings).

    Initialised from a private generator seeded by `seed`, so creating them leaves the global RNG (and with
    it every other random draw of the run) as it was."""

    def __init__(self, student_width: int, teacher_width: int, num_layers: int, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
            self.maps = nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(num_layers + 1))
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(student_width)  # nn.Linear's default range
        with torch.no_grad():
            for m in self.maps:
                m.weight.copy_(torch.empty_like(m.weight).uniform_(-bound, bound, generator=gen))
                m.bias.zero_()

    def forward(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """(B, S, student_width) hidden state `index` -> (B, S, teacher_width)."""
        return self.maps[index](h)


def projection_index(name: str) -> int | None:
    """Hidden-state index of a projection parameter name (`...maps.<i>.weight`), else None."""
    parts = name.split(".")
    if "maps" in parts:
        i = parts.index("maps")
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None
