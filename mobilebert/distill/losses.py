"""Knowledge-transfer losses of MobileBERT as pure functions (paper §3.3-3.4, eqs. 2-4; GR run_pretraining.py).

Shapes: B batch, S sequence length, N feature-map width (hidden_size, 512), A heads, V vocabulary.
`attention_mask` is (B, S) with 1 for real tokens and 0 for padding. Teacher tensors are detached here,
so no gradient can reach the teacher through these functions.

Reduction. Every loss is a *sum over loss items divided by a normaliser*. By default the normaliser is
the number of items in the given batch (a plain mean). The training loop passes the item count of the
whole global batch instead (`normalizer=`), so gradient accumulation and DDP give exactly the gradient of
one big batch. Items are: tokens (feature maps, mean/var), (query token, head) pairs (attention), masked
positions (MLM, KD) and sequences (NSP).

Variants (paper vs official code, reference §2.3 and §7):
  feature_map_loss      eq. 2 MSE; `standardize=True` is GR's MSE between non-affine LayerNorm'd maps
                        (eps 1e-12, TF contrib default); GR also averages over padding (`attention_mask=None`).
                        The x100 factor (`hidden_distill_factor`) is applied by the strategy, not here.
  attention_kl_loss     eq. 3 per-head KL(teacher || student) over the non-padded keys, mean over
                        (query token, head) pairs of real tokens.
  attention_ce_loss     GR: -sum_k softmax(t) log softmax(s) on the masked scores as given (= KL + teacher
                        entropy: same gradient), averaged over all rows incl. padding when attention_mask=None.
  cls_weight=           (feature maps and attention) the [CLS] position counts as this many tokens / query rows
                        (default 1: every position alike, GR and the paper). Not in the paper: a sentence-level
                        teacher gathers the sentence into [CLS], 1 position of S, whose loss is ~1/S of the term.
  mean_var_loss         GR's beta/gamma terms (not in the paper): (mean_t - mean_s)^2 and |var_t - var_s| of
                        each token's features. `teacher_all_layers=` reproduces GR's bug of taking the teacher
                        statistics from the stack of all teacher layers (reference §2.3 item 2).
  mlm_kd_loss           PD's MLM and KD terms at masked positions; KD is the soft cross-entropy against the
                        teacher distribution (GR), so alpha*MLM + (1-alpha)*KD equals GR's single CE against
                        soft labels alpha*one_hot + (1-alpha)*softmax(teacher).
  pretraining_distillation_loss   eq. 4: alpha*MLM + (1-alpha)*KD + NSP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TF_LAYER_NORM_EPS = 1e-12  # tf.contrib.layers.layer_norm's variance epsilon


def _reduce(per_item: torch.Tensor, weight: torch.Tensor | None, normalizer) -> torch.Tensor:
    """sum(per_item * weight) / (normalizer or sum(weight)); weight None means every item counts."""
    if weight is None:
        total = per_item.sum()
        count = per_item.numel()
    else:
        weight = weight.to(per_item.dtype)
        total = (per_item * weight).sum()
        count = weight.sum()
    denom = normalizer if normalizer is not None else count
    if isinstance(denom, torch.Tensor):
        return total / denom.clamp_min(1)
    return total / max(float(denom), 1.0)


def _weight_cls(per_item: torch.Tensor, cls_weight: float) -> torch.Tensor:
    """per_item (..., S) with the token / query axis last: position 0 ([CLS]) multiplied by cls_weight."""
    if cls_weight == 1.0:
        return per_item
    scale = per_item.new_ones(per_item.shape[-1])
    scale[0] = cls_weight
    return per_item * scale


def standardize(x: torch.Tensor, eps: float = TF_LAYER_NORM_EPS) -> torch.Tensor:
    """Non-affine LayerNorm over the feature axis (GR applies it to both maps before the MSE)."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


def feature_map_loss(teacher: torch.Tensor, student: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     *, standardize_maps: bool = False, cls_weight: float = 1.0, normalizer=None) -> torch.Tensor:
    """Eq. 2: 1/(T N) sum_t sum_n (H_tr - H_st)^2 for one layer, averaged over tokens.

    Args:
        teacher, student: (B, S, N) layer outputs (same N: the inter-block width).
        attention_mask: (B, S); padded tokens are left out. None averages over all tokens (GR).
        standardize_maps: GR's variant: MSE between non-affine LayerNorm'd maps.
        cls_weight: the [CLS] token (position 0) counts as this many tokens; the normaliser is unchanged.
        normalizer: number of tokens to divide by (default: the real tokens in this batch).
    """
    teacher = teacher.detach()
    if standardize_maps:
        teacher, student = standardize(teacher.float()), standardize(student.float())
    per_token = _weight_cls((teacher.float() - student.float()).pow(2).mean(-1), cls_weight)  # (B, S)
    return _reduce(per_token, attention_mask, normalizer)


def _attention_rows(attention_mask, B, A, S, device):
    """(B, A, S) weights of the (head, query) rows: 1 for real query tokens."""
    if attention_mask is None:
        return None
    return attention_mask[:, None, :].to(device).expand(B, A, S)


def attention_kl_loss(teacher_scores: torch.Tensor, student_scores: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, *, cls_weight: float = 1.0,
                      normalizer=None) -> torch.Tensor:
    """Eq. 3: per-head KL(a_tr || a_st) of the attention distributions, mean over (query, head) pairs.

    Args:
        teacher_scores, student_scores: (B, A, S, S) pre-softmax attention scores (the model's
            `attention_scores`). Padded keys are re-masked to -inf here, so the distributions are exactly
            those over the real keys whatever additive mask the model used.
        attention_mask: (B, S); padded keys are excluded and padded query rows do not count.
        cls_weight: the [CLS] query rows (what [CLS] gathers) count as this many rows each.
        normalizer: number of (query, head) pairs to divide by (default: those of real tokens here).
    """
    B, A, S, _ = student_scores.shape
    t, s = teacher_scores.detach().float(), student_scores.float()
    if attention_mask is not None:
        keys = attention_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        t = t.masked_fill(~keys, float("-inf"))
        s = s.masked_fill(~keys, float("-inf"))
    log_t, log_s = F.log_softmax(t, -1), F.log_softmax(s, -1)  # (B, A, S, S)
    # p_t * (log p_t - log p_s), with 0 where p_t == 0 (masked keys: avoids 0 * (-inf - -inf) = nan)
    terms = torch.where(log_t > float("-inf"), log_t.exp() * (log_t - log_s), torch.zeros_like(log_t))
    per_row = _weight_cls(terms.sum(-1), cls_weight)  # (B, A, S): the query axis last
    return _reduce(per_row, _attention_rows(attention_mask, B, A, S, per_row.device), normalizer)


def attention_ce_loss(teacher_scores: torch.Tensor, student_scores: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, *, cls_weight: float = 1.0,
                      normalizer=None) -> torch.Tensor:
    """GR's attention transfer: mean over rows of -sum_k softmax(t)_k log_softmax(s)_k, scores as given.

    attention_mask only drops padded *query rows* (GR keeps them: pass None); keys are as the model masked them.
    """
    B, A, S, _ = student_scores.shape
    p_t = F.softmax(teacher_scores.detach().float(), -1)
    log_s = F.log_softmax(student_scores.float(), -1)
    # 0 where p_t == 0: masked keys can be -inf (bf16 scores), and 0 * -inf would be nan
    per_row = -torch.where(p_t > 0, p_t * log_s, torch.zeros_like(log_s)).sum(-1)  # (B, A, S)
    per_row = _weight_cls(per_row, cls_weight)
    return _reduce(per_row, _attention_rows(attention_mask, B, A, S, per_row.device), normalizer)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token mean and (population) variance over the feature axis: (..., S, N) -> (..., S) twice."""
    x = x.float()
    mean = x.mean(-1)
    return mean, (x - mean.unsqueeze(-1)).pow(2).mean(-1)


def mean_var_loss(teacher: torch.Tensor, student: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                  teacher_all_layers: torch.Tensor | None = None, normalizer=None) -> tuple[torch.Tensor, torch.Tensor]:
    """GR's mean (beta) and variance (gamma) transfer for one layer; factors x5000 and x5 are the strategy's.

    Args:
        teacher, student: (B, S, N) layer outputs.
        attention_mask: (B, S) or None (GR: all tokens).
        teacher_all_layers: (L, B, S, N), GR's bug: the teacher statistics come from every teacher hidden
            state (embeddings included) and the loss is averaged over them (TF broadcasting). Overrides `teacher`.
    Returns:
        (beta, gamma): mean of (mean_t - mean_s)^2 and of |var_t - var_s| over tokens.
    """
    mean_s, var_s = _moments(student)  # (B, S)
    ref = teacher if teacher_all_layers is None else teacher_all_layers
    mean_t, var_t = _moments(ref.detach())  # (B, S) or (L, B, S)
    beta = (mean_t - mean_s).pow(2)
    gamma = (var_t - var_s).abs()
    if teacher_all_layers is not None:  # average the per-layer losses (GR's broadcast mean)
        beta, gamma = beta.mean(0), gamma.mean(0)
    return _reduce(beta, attention_mask, normalizer), _reduce(gamma, attention_mask, normalizer)


def mlm_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, *,
                temperature: float = 1.0, normalizer=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MLM cross-entropy and KD soft cross-entropy at the masked positions.

    Args:
        student_logits, teacher_logits: (..., V) with labels (...) where -100 marks positions not predicted;
            or already gathered (M, V) with labels (M,). teacher_logits None skips KD.
        temperature: Hinton's T: both distributions at logits/T, KD scaled by T^2 (T=1 is GR's setting).
        normalizer: number of masked positions to divide by (default: those in this batch).
    Returns:
        (mlm, kd): mean CE against the labels; mean of -sum_v softmax(t/T)_v log softmax(s/T)_v (or None).
    """
    keep = labels != -100
    s = student_logits[keep].float() if student_logits.shape[:-1] == labels.shape else student_logits.float()
    y = labels[keep]
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"{s.shape[0]} student logit rows for {y.shape[0]} masked positions")
    mlm = _reduce(F.cross_entropy(s, y, reduction="none"), None, normalizer)
    if teacher_logits is None:
        return mlm, None
    t = teacher_logits[keep] if teacher_logits.shape[:-1] == labels.shape else teacher_logits
    p_t = F.softmax(t.detach().float() / temperature, -1)
    soft = -(p_t * F.log_softmax(s / temperature, -1)).sum(-1) * temperature ** 2  # (M,)
    return mlm, _reduce(soft, None, normalizer)


def nsp_loss(logits: torch.Tensor, labels: torch.Tensor, *, normalizer=None) -> torch.Tensor:
    """Next-sentence cross-entropy (hard labels; 0 = B follows A), mean over sequences. logits (B, 2)."""
    return _reduce(F.cross_entropy(logits.float(), labels.reshape(-1), reduction="none"), None, normalizer)


def pretraining_distillation_loss(mlm: torch.Tensor, kd: torch.Tensor, nsp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 4: L_PD = alpha * L_MLM + (1 - alpha) * L_KD + L_NSP."""
    return alpha * mlm + (1.0 - alpha) * kd + nsp
