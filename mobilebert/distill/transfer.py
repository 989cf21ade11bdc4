"""Teacher -> student initialisation and what each stage trains (paper §3.5, Figure 2; GR run_pretraining.py).

* `copy_from_teacher`: every tensor outside the encoder whose name and shape match is copied from the
  teacher (word/position/type embeddings, `embedding_transformation`, the MLM and NSP heads), as GR's
  `init_embedding=True`. A norm is copied only between norms of the same kind: the teacher's embedding
  LayerNorm is not a NoNorm, and GR does not copy it either (their TF names differ).
* `stage_plan`: for each kind of stage, which parameters train and at what LR multiple:
    teacher, bare, akt, pd   everything
    emb                      the embeddings only (issue 11: learnt when they cannot be copied)
    jkt                      all encoder layers; embeddings and heads frozen (GR gives them LR 0)
    pkt stage l              layer l at `active_lr_scale` (GR 3x); layers below frozen (`freeze`) or at
                             `lower_lr_scale` (GR 0.3x = 0.1 x 3x, `reduced_lr`); layers above, embeddings
                             and heads frozen.
  `forward_plan` extends a plan to the trained `steps.Forward` module, whose learned width projections
  (distill/shapes.py) train with the hidden state they project: pkt-l its layer l's at the active LR, emb
  the embedding output's, jkt/akt all, pd the last layer's when PD transfers feature maps.
* `can_copy_embeddings` / `svd_init_embeddings`: a BERT teacher (or one of another shape) has no 128-d
  trigram embeddings to copy; the student's word embeddings then start from a truncated SVD of the teacher's.
  Frozen parameters get `requires_grad=False`, so no gradient is computed for them, DDP does not
  synchronise them and the optimizer never sees them.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

_LAYER = re.compile(r"\.encoder\.layer\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """0-based encoder layer of a parameter name, or None outside the encoder."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


@torch.no_grad()
def copy_from_teacher(teacher: nn.Module, student: nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy matching non-encoder tensors teacher -> student in place; returns the copied names. `skip`: name
    prefixes not to copy (a head the teacher's checkpoint lacks holds random weights, not knowledge)."""
    t_state = teacher.state_dict()
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    copied = []
    for name, tensor in student.state_dict().items():
        if layer_index(name) is not None or ".encoder." in name or name.startswith(skip):
            continue
        src = t_state.get(name)
        if src is None or src.shape != tensor.shape:
            continue
        owner = name.rsplit(".", 1)[0]
        if type(s_mods.get(owner)) is not type(t_mods.get(owner)):
            continue  # LayerNorm -> NoNorm: different functions, not copied (as GR)
        tensor.copy_(src)
        copied.append(name)
    return copied


def freeze(model: nn.Module) -> nn.Module:
    """No gradients for any parameter (the teacher during KT and PD)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def stage_plan(kind: str, num_layers: int, layer: int | None = None, lower_layers: str = "reduced_lr",
               active_lr_scale: float = 3.0, lower_lr_scale: float = 0.3) -> Callable[[str], float | None]:
    """`name -> LR multiple` for a stage; None means frozen. `layer` is 1-based (PKT stage l)."""
    if kind in ("teacher", "bare", "akt", "pd"):
        return lambda name: 1.0
    if kind == "emb":
        return lambda name: 1.0 if ".embeddings." in name else None
    if kind == "jkt":
        return lambda name: 1.0 if layer_index(name) is not None else None
    if kind == "pkt":
        active = layer - 1

        def scale(name: str) -> float | None:
            i = layer_index(name)
            if i is None or i > active:
                return None
            if i == active:
                return active_lr_scale
            return lower_lr_scale if lower_layers == "reduced_lr" else None

        return scale
    raise ValueError(f"unknown stage kind {kind!r}")


def projection_scales(kind: str, num_layers: int, layer: int | None = None, active_lr_scale: float = 3.0,
                      pd_feature_maps: bool = False, kt_feature_maps: bool = True) -> dict[int, float]:
    """Hidden-state index -> LR multiple of the projections a stage trains (the others are frozen: a trainable
    parameter no loss reaches would stop DDP). `kt_feature_maps`: KT has FMT or mean/var terms at all."""
    if kind in ("emb", "pkt", "jkt", "akt") and not kt_feature_maps:
        return {}
    if kind == "emb":
        return {0: 1.0}
    if kind == "pkt":
        return {layer: active_lr_scale}
    if kind in ("jkt", "akt"):
        return {l: 1.0 for l in range(1, num_layers + 1)}
    if kind == "pd" and pd_feature_maps:
        return {num_layers: 1.0}
    return {}


def forward_plan(model_scale: Callable[[str], float | None],
                 proj_scales: dict[int, float]) -> Callable[[str], float | None]:
    """The plan over `steps.Forward`'s names: `model.<name>` follows `model_scale`, `proj.maps.<i>.*` `proj_scales`."""
    from mobilebert.distill.shapes import projection_index

    def scale(name: str) -> float | None:
        if name.startswith("model."):
            return model_scale(name[len("model."):])
        return proj_scales.get(projection_index(name))

    return scale


_COPY_KEYS = ("embedding_size", "hidden_size", "max_position_embeddings", "type_vocab_size", "trigram_input")


def can_copy_embeddings(teacher_cfg, student_cfg) -> bool:
    """GR's copy needs a MobileBERT-layout teacher whose embedding block has the student's shape."""
    return (teacher_cfg.model_type == student_cfg.model_type == "mobilebert"
            and all(getattr(teacher_cfg, k) == getattr(student_cfg, k) for k in _COPY_KEYS))


@torch.no_grad()
def svd_init_embeddings(teacher: nn.Module, student: nn.Module) -> dict:
    """Initialise the student's (V, E) word embeddings from the teacher's (V, Ht) ones by a rank-E SVD.

    E_t = U S V^T; the student gets U_E S_E (its best rank-E summary). When the widths match, the rest of the
    embedding block is set so that, before any training, its output already approximates the teacher's:
      * `embedding_transformation` (H x 3E over the [next, cur, prev] trigram input): the current-token
        columns E:2E get V_E, so W [0; U_E S_E; 0] = the rank-E teacher word embedding; the next/prev
        columns and the bias start at 0 (they still get gradients, through the word embeddings of the
        neighbours, so the emb stage can bring context in);
      * position and token-type embeddings of the same shape are copied;
      * NoNorm (x*w + b, it cannot normalise) gets the teacher LayerNorm's affine, w = gamma / sigma, with sigma
        the typical per-token std of the teacher's pre-norm sum, so the un-standardised mean/variance terms
        start near the teacher's scale too.
    Measured on all-MiniLM-L6-v2 (rank 128 keeps 66% of the energy), 4 x 32 random tokens: the emb stage's
    standardised FMT starts at 0.33 (random init: 1.99; SVD words + transformation only: 0.55).
    Returns {"rank", "energy" (fraction of sum S^2 kept), "copied" (names)}.
    """
    t_emb, s_emb = teacher.base_model.embeddings, student.base_model.embeddings
    prefix = f"{student.config.base_prefix}.embeddings"
    et = t_emb.word_embeddings.weight.float()                     # (V, Ht)
    es = s_emb.word_embeddings.weight                             # (V, E)
    if et.shape[0] != es.shape[0]:
        raise ValueError(f"vocabularies differ: teacher {et.shape[0]} vs student {es.shape[0]} tokens")
    u, sv, vh = torch.linalg.svd(et, full_matrices=False)         # (V, r), (r,), (r, Ht)
    k = min(es.shape[1], sv.shape[0])
    es.zero_()
    es[:, :k] = (u[:, :k] * sv[:k]).to(es.dtype)
    copied = [f"{prefix}.word_embeddings.weight"]
    transform = getattr(s_emb, "embedding_transformation", None)
    E, same_width = es.shape[1], s_emb.position_embeddings.weight.shape[1] == et.shape[1]
    if transform is not None and s_emb.trigram_input and same_width:
        transform.weight.zero_()
        transform.weight[:, E:E + k] = vh[:k].t().to(transform.weight.dtype)  # (H, k)
        transform.bias.zero_()
        copied.append(f"{prefix}.embedding_transformation")
    for name in ("position_embeddings", "token_type_embeddings"):
        src, dst = getattr(t_emb, name).weight, getattr(s_emb, name).weight
        if src.shape == dst.shape:
            dst.copy_(src)
            copied.append(f"{prefix}.{name}.weight")
    t_norm, s_norm = t_emb.LayerNorm, s_emb.LayerNorm
    if same_width and isinstance(t_norm, nn.LayerNorm) and not isinstance(s_norm, nn.LayerNorm):
        pre = et + t_emb.position_embeddings.weight.float().mean(0) + t_emb.token_type_embeddings.weight[0].float()
        sigma = pre.std(-1).mean().clamp_min(1e-6)                 # typical per-token std of the pre-norm sum
        s_norm.weight.copy_(t_norm.weight / sigma)
        s_norm.bias.copy_(t_norm.bias)
        copied.append(f"{prefix}.LayerNorm (NoNorm <- teacher LayerNorm affine / {float(sigma):.3g})")
    energy = float(sv[:k].pow(2).sum() / sv.pow(2).sum())
    return {"rank": k, "energy": energy, "copied": copied}


def apply_plan(model: nn.Module, scale: Callable[[str], float | None]) -> tuple[int, int]:
    """Set requires_grad from the plan; returns (trainable, total) parameter counts."""
    trainable = total = 0
    seen = set()
    for name, p in model.named_parameters():
        on = bool(scale(name))
        p.requires_grad_(on)
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if on else 0
    return trainable, total
