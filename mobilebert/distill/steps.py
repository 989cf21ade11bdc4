"""Per-step losses of every pipeline stage, in the engine's global-normalised convention (paper §3.3-3.5).

    MlmNspLoss        teacher pre-training and the `bare` baseline: MLM + NSP
    TransferLoss      layer-wise knowledge transfer (PKT stage l, JKT; AKT adds the PD terms)
    DistillationLoss  pre-training distillation: alpha*MLM + (1-alpha)*KD + NSP  (eq. 4)

Each is an `engine.loop.LossStep` in its global-normalised form: `denominators(batch)` gives the masked
positions, sequences, tokens and attention rows of the micro-batch; the engine sums them over the global
batch and calls `loss(model, batch, totals)`, so a loss is the same whatever the gradient accumulation and
the number of ranks.

`Forward` is the module DDP wraps: the trained model plus the one forward every loss needs, and, when the
two models' widths differ, the learned projections of the student's feature maps (distill/shapes.py), so
they train, synchronise and checkpoint with the step. The MLM head runs only on the masked positions
((M, V) logits rather than (B, S, V)). `num_layers=l` runs the first l layers only: a PKT stage costs in
proportion to its depth, for the teacher too (which runs m_l layers deep, m the layer map).

Transfer input (`kt.input`). GR computes every transfer term on the MLM-corrupted batch the MLM loss reads.
`clean` computes them on the original tokens instead (TinyBERT's and MiniLM's distillation input): a teacher
that never saw [MASK] (a sentence-transformers BERT) then teaches its behaviour on real text, the text that
zero-shot use and fine-tuning feed. Where a step also has the MLM loss (AKT, the final stage's feature maps),
the student runs once on `doubled(batch)`: the masked rows for MLM and NSP, then the clean rows for transfer.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilebert.distill import losses as L
from mobilebert.distill.shapes import group_heads


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
    """Wraps the trained model (and the width projections, if any) so that DDP sees the whole step's forward.

    `project=[i, ...]` adds res["projected"][i]: hidden state i mapped to the teacher's width (the hidden
    state itself when there are no projections, i.e. equal widths)."""

    def __init__(self, model: nn.Module, proj: nn.Module | None = None):
        super().__init__()
        self.model = model
        if proj is not None:  # registered only when present: equal-width runs keep today's parameter list
            self.proj = proj

    def forward(self, batch: dict, project=(), **kw) -> dict:
        res = run_model(self.model, batch, **kw)
        if project:
            proj = getattr(self, "proj", None)
            hs = res["hidden_states"]
            res["projected"] = {i: proj(i, hs[i]) if proj is not None else hs[i] for i in project}
        return res


def _projected(out: dict, i: int) -> torch.Tensor:
    """Student hidden state i at the teacher's width (outputs of a plain model: the hidden state)."""
    return out.get("projected", {}).get(i, out["hidden_states"][i])


def unmasked(batch: dict) -> dict:
    """The batch with the original tokens back where MLM masked them, and no MLM labels."""
    labels = batch["labels"]
    keep = labels != -100                                                     # (B, S) masked positions
    return {**batch, "input_ids": torch.where(keep, labels, batch["input_ids"]),
            "labels": torch.full_like(labels, -100)}


def doubled(batch: dict) -> dict:
    """(2B, ...): the masked batch, then `unmasked(batch)`; MLM logits come from the first B rows only."""
    clean = unmasked(batch)
    return {k: torch.cat([v, clean[k]]) for k, v in batch.items()}


def transfer_input(batch: dict, clean: bool, with_mlm: bool) -> tuple[dict, slice]:
    """(the batch the models run on, the rows of it the transfer terms read) for `kt.input` clean or masked."""
    if not clean:
        return batch, slice(None)
    if not with_mlm:
        return unmasked(batch), slice(None)
    return doubled(batch), slice(batch["input_ids"].shape[0], None)


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
    """Eq. 4 with the teacher frozen: alpha*MLM + (1-alpha)*KD + NSP (GR: alpha=0.5, T=1).

    A teacher without an MLM head (`teacher_logits=False`, e.g. a sentence-transformers BERT) has no
    distribution to distil: KD is 0, the loss is alpha*MLM + NSP (NSP is always ground truth), and
    `fmt_weight` x the last-layer feature-map transfer (student layer Ls, through its projection, against
    teacher layer `fmt_layers[1]` = m_Ls) carries the teacher's knowledge instead. `fmt_weight` > 0 adds that
    term with a logit teacher too.
    """

    def __init__(self, teacher: nn.Module | None, alpha: float, temperature: float = 1.0, *,
                 teacher_logits: bool = True, fmt_weight: float = 0.0, fmt_layers: tuple[int, int] | None = None,
                 fmt_standardize: bool = True, fmt_mask_padding: bool = False, clean_input: bool = False,
                 cls_weight: float = 1.0):
        self.teacher, self.alpha, self.temperature = teacher, alpha, temperature
        self.clean_input = clean_input  # the feature maps on the original tokens (kt.input=clean)
        self.teacher_logits = teacher_logits
        self.fmt_weight, self.fmt_layers = (fmt_weight, fmt_layers) if teacher is not None else (0.0, None)
        self.fmt_standardize, self.fmt_mask_padding = fmt_standardize, fmt_mask_padding
        self.cls_weight = cls_weight  # kt.cls_weight: [CLS]'s weight in the feature-map term
        if self.fmt_weight and fmt_layers is None:
            raise ValueError("fmt_weight needs fmt_layers=(student layer, teacher layer)")

    def denominators(self, batch: dict) -> dict:
        d = _mlm_nsp_denominators(batch)
        if self.fmt_weight:
            B, S = batch["input_ids"].shape
            d["tok_fmt"] = float(batch["attention_mask"].sum()) if self.fmt_mask_padding else float(B * S)
        return d

    @property
    def uses_teacher_logits(self) -> bool:
        return self.teacher is not None and self.alpha < 1.0 and self.teacher_logits

    def terms(self, s_out: dict, batch: dict, totals: dict, t_out: dict | None = None) -> tuple[torch.Tensor, dict]:
        """PD terms from the student's outputs; `t_out` reuses a teacher forward that already ran with heads."""
        t_logits = None
        if self.uses_teacher_logits:
            if t_out is None or "mlm_logits" not in t_out:
                with torch.no_grad():
                    t_out = run_model(self.teacher, batch, heads=True)
            t_logits = t_out["mlm_logits"]
        mlm, kd = L.mlm_kd_loss(s_out["mlm_logits"], t_logits, batch["labels"], temperature=self.temperature,
                                normalizer=totals["mlm"])
        nsp_logits = s_out["nsp_logits"][:batch["input_ids"].shape[0]]  # (B, 2): a doubled batch's masked rows
        nsp = L.nsp_loss(nsp_logits, batch["next_sentence_label"], normalizer=totals["seq"])
        kd = kd if kd is not None else torch.zeros_like(mlm)
        loss = L.pretraining_distillation_loss(mlm, kd, nsp, self.alpha)
        logs = {"mlm": mlm.detach(), "kd": kd.detach(), "nsp": nsp.detach(),
                "mlm_acc": _mlm_accuracy(s_out["mlm_logits"].detach(), batch, totals["mlm"])}
        return loss, logs

    def __call__(self, model, batch, totals):
        if not self.fmt_weight:
            return self.terms(model(batch, heads=True), batch, totals)
        ls, lt = self.fmt_layers
        run_on, rows = transfer_input(batch, self.clean_input, with_mlm=True)
        with torch.no_grad():  # logits need the whole teacher; feature maps only its first lt layers
            logits = self.uses_teacher_logits
            t_out = run_model(self.teacher, run_on, heads=logits, num_layers=None if logits else lt, hidden=True)
        s_out = model(run_on, heads=True, hidden=True, project=[ls])
        loss, logs = self.terms(s_out, batch, totals, t_out=t_out)
        mask = batch["attention_mask"] if self.fmt_mask_padding else None
        th, sh = t_out["hidden_states"][lt][rows], _projected(s_out, ls)[rows]
        fmt = self.fmt_weight * L.feature_map_loss(th, sh, mask,
                                                   standardize_maps=self.fmt_standardize, cls_weight=self.cls_weight,
                                                   normalizer=totals["tok_fmt"])
        logs["fmt"] = fmt.detach()
        return loss + fmt, logs


class TransferLoss:
    """Layer-wise transfer: sum over the trained layers l of w_FMT*FMT_l + w_AT*AT_l + beta_l + gamma_l, / L.

    Dividing by the total layer count L is GR's scaling (`x factor / 24` with one layer gated on per PKT
    phase); for JKT it makes the loss the mean over layers.

    Models of different shapes (issue 11): student layer l learns teacher layer `layer_map[l-1]`; the student's
    feature maps pass through the `Forward`'s projections when the widths differ (FMT and mean/var both);
    attention compares distributions averaged over groups of heads when the head counts differ (equal counts
    compare the scores as before). Layer 0 is the embedding output (the `emb` stage: FMT + mean/var, no AT).

    Args:
        teacher: the frozen teacher (`MobileBertForPreTraining`).
        kt: `KtSettings` (weights and variants of each term).
        layers: student layers whose losses count (PKT: [l]; JKT/AKT: 1..L; emb: [0]).
        num_layers: L, the student's depth.
        depth: run the student only this deep (PKT: l; emb: 0); None runs it whole.
        pd: a `DistillationLoss` to add (AKT: all layer losses plus PD in one loss), or None.
        layer_map: teacher layer of each student layer 1..L (None: the identity, equal depths).
        student_heads: the student's head count (None: the teacher's).
    """

    def __init__(self, teacher, kt, layers: list[int], num_layers: int, depth: int | None = None,
                 pd: DistillationLoss | None = None, *, layer_map: list[int] | None = None,
                 student_heads: int | None = None):
        self.teacher, self.kt, self.layers, self.L, self.depth, self.pd = teacher, kt, layers, num_layers, depth, pd
        self.map = [0] + list(layer_map if layer_map is not None else range(1, num_layers + 1))  # index 0: embeddings
        self.t_heads = teacher.config.num_attention_heads
        self.heads = min(self.t_heads, student_heads or self.t_heads)
        self.all_layer_stats = kt.mean_var.all_layer_teacher_stats and (kt.mean_var.beta or kt.mean_var.gamma)
        self.want_scores = kt.at.weight > 0 and any(l > 0 for l in layers)
        # The teacher runs as deep as the deepest teacher layer it must give (GR's all-layer statistics: whole).
        self.t_depth = None if self.all_layer_stats or depth is None else self.map[depth]
        self.t_logits = pd is not None and pd.uses_teacher_logits

    def denominators(self, batch: dict) -> dict:
        B, S = batch["input_ids"].shape
        real = float(batch["attention_mask"].sum())
        d = {"tok_fmt": real if self.kt.fmt.mask_padding else float(B * S),
             "rows_at": (real if self.kt.at.mask_padding else float(B * S)) * self.heads}
        if self.pd is not None:
            d.update(_mlm_nsp_denominators(batch))
        return d

    def _attention(self, scores, heads_of: int):
        """Scores as given when the head counts match (today's losses exactly), else group-averaged log-probs."""
        return scores if heads_of == self.heads else group_heads(scores, self.heads)

    def __call__(self, model, batch, totals):
        kt = self.kt
        run_on, rows = transfer_input(batch, kt.input == "clean", with_mlm=self.pd is not None)
        with torch.no_grad():
            t = run_model(self.teacher, run_on, heads=self.t_logits, num_layers=self.t_depth, hidden=True,
                          scores=self.want_scores)
        s = model(run_on, heads=self.pd is not None, num_layers=self.depth, hidden=True, scores=self.want_scores,
                  project=self.layers)
        mask = batch["attention_mask"]
        fmt_mask = mask if kt.fmt.mask_padding else None
        at_mask = mask if kt.at.mask_padding else None
        at_fn = L.attention_kl_loss if kt.at.kind == "kl" else L.attention_ce_loss
        stack = torch.stack(t["hidden_states"])[:, rows] if self.all_layer_stats else None  # (Lt+1, B, S, Nt)
        zero = s["hidden_states"][0].new_zeros((), dtype=torch.float32)
        fmt = at = beta = gamma = zero
        s_heads = None
        for l in self.layers:
            m = self.map[l]
            th, sh = t["hidden_states"][m][rows], _projected(s, l)[rows]  # layer outputs (0 = embeddings), (B, S, Nt)
            if kt.fmt.weight:
                fmt = fmt + L.feature_map_loss(th, sh, fmt_mask, standardize_maps=kt.fmt.standardize,
                                               cls_weight=kt.cls_weight, normalizer=totals["tok_fmt"])
            if kt.at.weight and l > 0:
                ts, ss = t["attention_scores"][m - 1][rows], s["attention_scores"][l - 1][rows]  # (B, H, S, S)
                s_heads = ss.shape[1]
                at = at + at_fn(self._attention(ts, self.t_heads), self._attention(ss, s_heads), at_mask,
                                cls_weight=kt.cls_weight, normalizer=totals["rows_at"])
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
