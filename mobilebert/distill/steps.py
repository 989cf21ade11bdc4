"""Per-step losses of every pipeline stage, in the engine's global-normalised convention (paper §3.3-3.5).

    MlmNspLoss        teacher pre-training and the `bare` baseline: MLM + NSP
    TransferLoss      layer-wise knowledge transfer (PKT stage l, JKT; AKT adds the PD terms)
    DistillationLoss  pre-training distillation: alpha*MLM + (1-alpha)*KD + NSP  (eq. 4)

Each has `denominators(batch)` (masked positions, sequences, tokens, attention rows in the micro-batch);
the engine sums them over the global batch and passes the totals back, so a loss is the same whatever
the gradient accumulation and the number of ranks.

`Forward` is the module DDP wraps: the trained model plus the one forward every loss needs. The MLM head
runs only on the masked positions ((M, V) logits rather than (B, S, V)). `num_layers=l` runs the first
l layers only: a PKT stage costs in proportion to its depth, for the teacher too.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilebert.distill import losses as L


def run_model(model: nn.Module, batch: dict, *, heads: bool, num_layers: int | None = None,
              hidden: bool = False, scores: bool = False) -> dict:
    """Forward of a `MobileBertForPreTraining`; returns a dict of the tensors the losses read."""
    out = model.base_model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           output_hidden_states=hidden, output_attention_scores=scores, num_layers=num_layers)
    res = {"hidden_states": out.hidden_states, "attention_scores": out.attention_scores}
    if heads:
        keep = batch["labels"] != -100                                           # (B, S)
        res["mlm_logits"] = model.cls.predictions(out.last_hidden_state[keep])   # (M, V)
        res["nsp_logits"] = model.cls.seq_relationship(out.pooler_output)        # (B, 2)
    return res


class Forward(nn.Module):
    """Wraps the trained model so that DDP sees the whole step's forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, **kw) -> dict:
        return run_model(self.model, batch, **kw)


def _mlm_nsp_denominators(batch: dict) -> dict:
    return {"mlm": float((batch["labels"] != -100).sum()), "seq": float(batch["input_ids"].shape[0])}


def _mlm_accuracy(logits: torch.Tensor, batch: dict, total: float) -> torch.Tensor:
    y = batch["labels"][batch["labels"] != -100]
    return (logits.argmax(-1) == y).sum().double() / max(total, 1.0)


class MlmNspLoss:
    """L = MLM + NSP (teacher pre-training, and the student trained without a teacher)."""

    denominators = staticmethod(_mlm_nsp_denominators)

    def __call__(self, model, batch, totals):
        out = model(batch, heads=True)
        mlm, _ = L.mlm_kd_loss(out["mlm_logits"], None, batch["labels"], normalizer=totals["mlm"])
        nsp = L.nsp_loss(out["nsp_logits"], batch["next_sentence_label"], normalizer=totals["seq"])
        logs = {"mlm": mlm.detach(), "nsp": nsp.detach(),
                "mlm_acc": _mlm_accuracy(out["mlm_logits"].detach(), batch, totals["mlm"])}
        return mlm + nsp, logs


class DistillationLoss:
    """Eq. 4 with the teacher frozen: alpha*MLM + (1-alpha)*KD + NSP (GR: alpha=0.5, T=1)."""

    denominators = staticmethod(_mlm_nsp_denominators)

    def __init__(self, teacher: nn.Module | None, alpha: float, temperature: float = 1.0):
        self.teacher, self.alpha, self.temperature = teacher, alpha, temperature

    def terms(self, s_out: dict, batch: dict, totals: dict, t_out: dict | None = None) -> tuple[torch.Tensor, dict]:
        """PD terms from the student's outputs; `t_out` reuses a teacher forward that already ran with heads."""
        t_logits = None
        if self.teacher is not None and self.alpha < 1.0:
            if t_out is None or "mlm_logits" not in t_out:
                with torch.no_grad():
                    t_out = run_model(self.teacher, batch, heads=True)
            t_logits = t_out["mlm_logits"]
        mlm, kd = L.mlm_kd_loss(s_out["mlm_logits"], t_logits, batch["labels"], temperature=self.temperature,
                                normalizer=totals["mlm"])
        nsp = L.nsp_loss(s_out["nsp_logits"], batch["next_sentence_label"], normalizer=totals["seq"])
        kd = kd if kd is not None else torch.zeros_like(mlm)
        loss = L.pretraining_distillation_loss(mlm, kd, nsp, self.alpha)
        logs = {"mlm": mlm.detach(), "kd": kd.detach(), "nsp": nsp.detach(),
                "mlm_acc": _mlm_accuracy(s_out["mlm_logits"].detach(), batch, totals["mlm"])}
        return loss, logs

    def __call__(self, model, batch, totals):
        return self.terms(model(batch, heads=True), batch, totals)


class TransferLoss:
    """Layer-wise transfer: sum over the trained layers l of w_FMT*FMT_l + w_AT*AT_l + beta_l + gamma_l, / L.

    Dividing by the total layer count L is GR's scaling (`x factor / 24` with one layer gated on per PKT
    phase); for JKT it makes the loss the mean over layers.

    Args:
        teacher: the frozen teacher (`MobileBertForPreTraining`).
        kt: `KtSettings` (weights and variants of each term).
        layers: 1-based layers whose losses count (PKT: [l]; JKT/AKT: 1..L).
        num_layers: L, the depth of both models.
        depth: run both models only this deep (PKT: l); None runs them whole.
        pd: a `DistillationLoss` to add (AKT: all layer losses plus PD in one loss), or None.
    """

    def __init__(self, teacher, kt, layers: list[int], num_layers: int, depth: int | None = None,
                 pd: DistillationLoss | None = None):
        self.teacher, self.kt, self.layers, self.L, self.depth, self.pd = teacher, kt, layers, num_layers, depth, pd
        self.all_layer_stats = kt.mean_var.all_layer_teacher_stats and (kt.mean_var.beta or kt.mean_var.gamma)
        self.want_scores = kt.at.weight > 0

    def denominators(self, batch: dict) -> dict:
        B, S = batch["input_ids"].shape
        real = float(batch["attention_mask"].sum())
        heads = self.teacher.config.num_attention_heads
        d = {"tok_fmt": real if self.kt.fmt.mask_padding else float(B * S),
             "rows_at": (real if self.kt.at.mask_padding else float(B * S)) * heads}
        if self.pd is not None:
            d.update(_mlm_nsp_denominators(batch))
        return d

    def __call__(self, model, batch, totals):
        kt = self.kt
        with torch.no_grad():
            # GR's all-layer statistics need every teacher layer, so the teacher then runs whole.
            t_depth = None if self.all_layer_stats else self.depth
            t = run_model(self.teacher, batch, heads=self.pd is not None, num_layers=t_depth, hidden=True,
                          scores=self.want_scores)
        s = model(batch, heads=self.pd is not None, num_layers=self.depth, hidden=True, scores=self.want_scores)
        mask = batch["attention_mask"]
        fmt_mask = mask if kt.fmt.mask_padding else None
        at_mask = mask if kt.at.mask_padding else None
        at_fn = L.attention_kl_loss if kt.at.kind == "kl" else L.attention_ce_loss
        stack = torch.stack(t["hidden_states"]) if self.all_layer_stats else None  # (L+1, B, S, N)
        zero = s["hidden_states"][0].new_zeros((), dtype=torch.float32)
        fmt = at = beta = gamma = zero
        for l in self.layers:
            th, sh = t["hidden_states"][l], s["hidden_states"][l]  # layer outputs (index 0 = embeddings)
            if kt.fmt.weight:
                fmt = fmt + L.feature_map_loss(th, sh, fmt_mask, standardize_maps=kt.fmt.standardize,
                                               normalizer=totals["tok_fmt"])
            if kt.at.weight:
                at = at + at_fn(t["attention_scores"][l - 1], s["attention_scores"][l - 1], at_mask,
                                normalizer=totals["rows_at"])
            if kt.mean_var.beta or kt.mean_var.gamma:
                b, g = L.mean_var_loss(th, sh, fmt_mask, teacher_all_layers=stack, normalizer=totals["tok_fmt"])
                beta, gamma = beta + b, gamma + g
        fmt, at = fmt * kt.fmt.weight / self.L, at * kt.at.weight / self.L
        beta, gamma = beta * kt.mean_var.beta / self.L, gamma * kt.mean_var.gamma / self.L
        loss = fmt + at + beta + gamma
        logs = {"fmt": fmt.detach(), "at": at.detach(), "beta": beta.detach(), "gamma": gamma.detach()}
        if self.pd is not None:
            pd_loss, pd_logs = self.pd.terms(s, batch, totals, t_out=t)
            loss = loss + pd_loss
            logs.update(pd_logs)
        return loss, logs
