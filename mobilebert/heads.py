"""Task heads on top of `MobileBertModel`: pre-training (MLM + NSP), masked LM, NSP, sequence
classification (single-label, regression, multi-label), question answering, token classification and
multiple choice. Module names and losses follow transformers' MobileBERT (and BERT) heads exactly.

MobileBERT's MLM head (official `get_logits`): h' = LayerNorm(act(Linear_512->512(h))), then
logits = h' @ [E^T (128 x V) ; W_extra (384 x V)] + b: the first 128 dims score against the tied
input embeddings, the other 384 against an untied extra matrix (`cls.predictions.dense`, stored [384, V]).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from mobilebert.checkpoint import load_config, load_pretrained
from mobilebert.config import MobileBertConfig
from mobilebert.errors import ConfigError
from mobilebert.model import ACT2FN, ModelOutput, MobileBertModel, PreTrainedMixin, init_weights, masked_mean


class PredictionHeadTransform(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = ACT2FN[cfg.hidden_act]
        # A real LayerNorm even when the body uses NoNorm (as the official code and transformers).
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h):
        return self.LayerNorm(self.act(self.dense(h)))


class LMPredictionHead(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.mobile = cfg.model_type == "mobilebert"
        self.transform = PredictionHeadTransform(cfg)
        if self.mobile:
            # Declared (V -> H-E) as in transformers, so its weight is stored [H-E, V] and used untransposed.
            self.dense = nn.Linear(cfg.vocab_size, cfg.hidden_size - cfg.embedding_size, bias=False)
            self.decoder = nn.Linear(cfg.embedding_size, cfg.vocab_size)
        else:
            self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder.bias = self.bias  # tied, as transformers ties them

    def forward(self, h):
        h = self.transform(h)  # (..., H)
        if not self.mobile:
            return self.decoder(h)
        w = torch.cat([self.decoder.weight.t(), self.dense.weight], dim=0)  # (H, V)
        return h.matmul(w) + self.bias


class PreTrainingHeads(nn.Module):
    def __init__(self, cfg: MobileBertConfig, nsp: bool = True, mlm: bool = True):
        super().__init__()
        if mlm:
            self.predictions = LMPredictionHead(cfg)
        if nsp:
            self.seq_relationship = nn.Linear(cfg.hidden_size, 2)


class MobileBertPreTrainedModel(PreTrainedMixin, nn.Module):
    """Base of the head models: holds the config and the base model under `mobilebert.` (or `bert.`).

    Each head writes its forward pass once, in `head_outputs(hidden, pooled, input_shape)`: the encoder's
    last hidden states (B, S, H) and pooled [CLS] (B, H) to the head's outputs, in the order and under the
    ModelOutput field names of `output_names`. Its `forward` adds the losses; the export wrapper
    (mobilebert.export.wrapper) calls the same method on its own encoder pass."""

    add_pooling_layer = True
    output_names: tuple[str, ...] = ("logits",)  # heads with other outputs name them

    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.config = cfg
        setattr(self, cfg.base_prefix, MobileBertModel(cfg, add_pooling_layer=self.add_pooling_layer, init=False))

    @property
    def base_model(self) -> MobileBertModel:
        return getattr(self, self.config.base_prefix)

    def post_init(self):
        init_weights(self, self.config)
        self.tie_weights()

    def tie_weights(self):
        cls = getattr(self, "cls", None)
        if cls is not None and hasattr(cls, "predictions"):
            cls.predictions.decoder.weight = self.base_model.embeddings.word_embeddings.weight
            cls.predictions.decoder.bias = cls.predictions.bias

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, **kw) -> ModelOutput:
        return self.base_model(input_ids, attention_mask, token_type_ids, position_ids, **kw)

    def encode_and_head(self, input_ids, attention_mask, token_type_ids, position_ids, **kw):
        """(the base model's ModelOutput, this head's `head_outputs` on it): what a forward adds losses to."""
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, **kw)
        return out, self.head_outputs(out.last_hidden_state, out.pooler_output, input_ids.shape)


def _carry(out: ModelOutput, **fields) -> ModelOutput:
    """A head's output: its own fields plus the base model's hidden states and attention maps."""
    return ModelOutput(hidden_states=out.hidden_states, attentions=out.attentions,
                       attention_scores=out.attention_scores, last_hidden_state=out.last_hidden_state,
                       pooler_output=out.pooler_output, **fields)


class MobileBertForPreTraining(MobileBertPreTrainedModel):
    output_names = ("prediction_logits", "seq_relationship_logits")

    def __init__(self, cfg: MobileBertConfig):
        super().__init__(cfg)
        self.cls = PreTrainingHeads(cfg)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                next_sentence_label=None, sparse_mlm: bool = False, **kw) -> ModelOutput:
        """sparse_mlm=True (with labels) scores only the positions where labels != -100:
        prediction_logits is then (num_masked, V), which saves most of the MLM head's cost in training."""
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, **kw)
        h = out.last_hidden_state
        if sparse_mlm and labels is not None:
            keep = labels != -100
            h, labels = h[keep], labels[keep]
        mlm, nsp = self.head_outputs(h, out.pooler_output, input_ids.shape)
        loss = mlm_loss = nsp_loss = None
        if labels is not None:
            mlm_loss = F.cross_entropy(_up(mlm.reshape(-1, mlm.shape[-1])), labels.reshape(-1), ignore_index=-100)
            loss = mlm_loss
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(_up(nsp.reshape(-1, 2)), next_sentence_label.reshape(-1))
            loss = nsp_loss if loss is None else loss + nsp_loss
        return _carry(out, loss=loss, mlm_loss=mlm_loss, nsp_loss=nsp_loss, prediction_logits=mlm,
                      seq_relationship_logits=nsp)

    def head_outputs(self, hidden, pooled, input_shape):
        # hidden: (B, S, H), or (num_masked, H) for sparse_mlm; MLM (..., V) and NSP (B, 2) logits.
        return self.cls.predictions(hidden), self.cls.seq_relationship(pooled)


class MobileBertForMaskedLM(MobileBertPreTrainedModel):
    add_pooling_layer = False

    def __init__(self, cfg: MobileBertConfig):
        super().__init__(cfg)
        self.cls = PreTrainingHeads(cfg, nsp=False)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None, **kw):
        out, (logits,) = self.encode_and_head(input_ids, attention_mask, token_type_ids, position_ids, **kw)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(_up(logits.reshape(-1, logits.shape[-1])), labels.reshape(-1))
        return _carry(out, loss=loss, logits=logits)

    def head_outputs(self, hidden, pooled, input_shape):
        return (self.cls.predictions(hidden),)  # (B, S, V)


class MobileBertForNextSentencePrediction(MobileBertPreTrainedModel):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__(cfg)
        self.cls = PreTrainingHeads(cfg, mlm=False)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None, **kw):
        out, (logits,) = self.encode_and_head(input_ids, attention_mask, token_type_ids, position_ids, **kw)
        loss = F.cross_entropy(_up(logits), labels.reshape(-1)) if labels is not None else None
        return _carry(out, loss=loss, logits=logits)

    def head_outputs(self, hidden, pooled, input_shape):
        return (self.cls.seq_relationship(pooled),)  # (B, 2)


def _up(x: torch.Tensor) -> torch.Tensor:
    """Losses in at least float32 (logits may be bf16 under autocast); float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _classifier_dropout(cfg: MobileBertConfig) -> nn.Dropout:
    return nn.Dropout(cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob)


class MobileBertForSequenceClassification(MobileBertPreTrainedModel):
    """A classifier (or regressor) on the pooled [CLS] or mean state; or, with classifier_pooling="siamese", on the
    two sentences of a pair encoded apart (sentence-transformers' bi-encoder, Reimers & Gurevych 2019): classes
    from [u, v, |u - v|, u * v] (`siamese_features`), a regression score from an affine map of cos(u, v)."""

    def __init__(self, cfg: MobileBertConfig):
        super().__init__(cfg)
        self.num_labels = cfg.num_labels
        self.dropout = _classifier_dropout(cfg)
        # siamese: classes read [u, v, |u - v|, u * v], four states wide; a regression score reads the cosine
        width = (1 if self.num_labels == 1 else 4 * cfg.hidden_size) if self.siamese else cfg.hidden_size
        self.classifier = nn.Linear(width, cfg.num_labels)
        self.post_init()

    @property
    def siamese(self) -> bool:
        return self.config.classifier_pooling == "siamese"

    def fit_cosine_range(self, low: float, high: float) -> None:
        """Siamese regression: start the score at `low` for cosine 0 and `high` for cosine 1, as SBERT trains the
        cosine toward label / 5 on STS-B (low 0, high 5). A classifier at N(0, 0.02) would start every score near
        0, and its slope and offset, one weight each, move ~lr per step: too slowly to reach the label range."""
        with torch.no_grad():
            self.classifier.weight.fill_(high - low)
            self.classifier.bias.fill_(low)

    @property
    def add_pooling_layer(self) -> bool:  # siamese features are raw means: a pooler would be trained by nothing
        return not self.siamese

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None, **kw):
        if self.siamese:
            rows = siamese_rows(input_ids, attention_mask, token_type_ids)
            out = self.encode(*rows, **kw)
            logits = self.siamese_logits(out.last_hidden_state, rows[1])
        else:
            out, (logits,) = self.encode_and_head(input_ids, attention_mask, token_type_ids, position_ids, **kw)
        loss = None
        if labels is not None:
            kind = self.config.problem_type
            if kind is None:  # transformers' rule
                if self.num_labels == 1:
                    kind = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    kind = "single_label_classification"
                else:
                    kind = "multi_label_classification"
                self.config.problem_type = kind
            x = _up(logits)
            if kind == "regression":
                x, y = (x.squeeze(), labels.squeeze()) if self.num_labels == 1 else (x, labels)
                loss = F.mse_loss(x, y.to(x.dtype))
            elif kind == "single_label_classification":
                loss = F.cross_entropy(x.reshape(-1, self.num_labels), labels.reshape(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(x, labels.to(x.dtype))
        return _carry(out, loss=loss, logits=logits)

    def head_outputs(self, hidden, pooled, input_shape):
        return (self.classifier(self.dropout(pooled)),)  # (B, num_labels)

    def siamese_logits(self, hidden: torch.Tensor, rows_mask: torch.Tensor) -> torch.Tensor:
        """The siamese head, for the forward and the export alike: (2B, L, H) last-layer states of `siamese_rows`
        and their (2B, L) mask -> (B, num_labels)."""
        # (B, H) each: the two sentences. Not .chunk(2): torch.export cannot prove its chunk count for a symbolic B.
        u, v = masked_mean(hidden, rows_mask).unflatten(0, (2, -1)).unbind(0)
        if self.num_labels == 1:  # regression: cos(u, v) (B, 1), mapped to the label range
            return self.classifier(F.cosine_similarity(u, v, dim=-1)[:, None])
        return self.classifier(self.dropout(siamese_features(u, v)))


def siamese_rows(input_ids, attention_mask=None, token_type_ids=None, trim: bool = True):
    """Pair rows [CLS] a [SEP] b [SEP] (B, S) -> the 2B rows the siamese encoder pass runs: B rows [CLS] a [SEP]
    then B rows [CLS] b [SEP], each padded to the longer of the two, with segment ids 0 (both sentences are
    encoded as single sentences, as sentence-transformers' bi-encoder and the zero-shot measure encode them).

    Returns (input_ids, attention_mask, token_type_ids), each (2B, L) with L <= S. Segment a is the tokens with
    segment id 0, b those with id 1 after them (the layout every pair feature has); a row without b repeats a.
    trim=False keeps L = S: a length the exported graph knows without reading the data (extra pads change nothing)."""
    B, S = input_ids.shape
    dev = input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    seg = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids.long()
    len_a = ((seg == 0) & (mask == 1)).sum(1)  # (B,) [CLS] a [SEP]
    len_b = ((seg == 1) & (mask == 1)).sum(1)  # (B,) b [SEP]
    single = len_b == 0
    # No Python scalars in the integer arithmetic: the int8 ExecuTorch export (pt2e) turns them into float32
    # constants, and the re-export then promotes these int64 lengths to float.
    cls_b = len_b + torch.ones_like(len_b)  # (B,) b's row: [CLS] b [SEP]
    L = int(torch.maximum(len_a, cls_b).max()) if trim else S
    j = torch.arange(L, device=dev)[None, :]  # (1, L)
    j_before = torch.arange(-1, L - 1, device=dev)[None, :]  # (1, L): j - 1
    # b's row: [CLS] (input position 0), then input positions len_a .. len_a + len_b - 1
    src_b = torch.where(j == 0, j, len_a[:, None] + j_before).clamp(max=S - 1)  # (B, L)
    src_b = torch.where(single[:, None], j.clamp(max=S - 1), src_b)  # no b: the row is a again
    len_b = torch.where(single, len_a, cls_b)
    ids = torch.cat([input_ids[:, :L], torch.gather(input_ids, 1, src_b)])  # (2B, L)
    keep = (j < torch.cat([len_a, len_b])[:, None]).long()  # (2B, L)
    return ids * keep, keep, torch.zeros_like(ids)


def siamese_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The two sentences' (B, H) mean states -> (B, 4H) [u, v, |u - v|, u * v]: SBERT's classification features
    (Reimers & Gurevych 2019) with u * v added, whose sum is the dot product that cosine similarity is made of."""
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


class MobileBertForQuestionAnswering(MobileBertPreTrainedModel):
    add_pooling_layer = False
    output_names = ("start_logits", "end_logits")

    def __init__(self, cfg: MobileBertConfig):
        super().__init__(cfg)
        self.qa_outputs = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                start_positions=None, end_positions=None, **kw):
        out, (start, end) = self.encode_and_head(input_ids, attention_mask, token_type_ids, position_ids, **kw)
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the window are clamped to S and ignored (transformers' rule).
            ignored = start.shape[1]
            sp = start_positions.reshape(-1).clamp(0, ignored)
            ep = end_positions.reshape(-1).clamp(0, ignored)
            loss = (F.cross_entropy(_up(start), sp, ignore_index=ignored)
                    + F.cross_entropy(_up(end), ep, ignore_index=ignored)) / 2
        return _carry(out, loss=loss, start_logits=start, end_logits=end)

    def head_outputs(self, hidden, pooled, input_shape):
        logits = self.qa_outputs(hidden)  # (B, S, 2)
        return tuple(t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))  # start, end: (B, S)


class MobileBertForTokenClassification(MobileBertPreTrainedModel):
    add_pooling_layer = False

    def __init__(self, cfg: MobileBertConfig):
        super().__init__(cfg)
        self.num_labels = cfg.num_labels
        self.dropout = _classifier_dropout(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None, **kw):
        out, (logits,) = self.encode_and_head(input_ids, attention_mask, token_type_ids, position_ids, **kw)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(_up(logits.reshape(-1, self.num_labels)), labels.reshape(-1))
        return _carry(out, loss=loss, logits=logits)

    def head_outputs(self, hidden, pooled, input_shape):
        return (self.classifier(self.dropout(hidden)),)  # (B, S, num_labels)


class MobileBertForMultipleChoice(MobileBertPreTrainedModel):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__(cfg)
        self.dropout = _classifier_dropout(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None, **kw):
        out = self.encode(*map(flat_choices, (input_ids, attention_mask, token_type_ids, position_ids)), **kw)
        (logits,) = self.head_outputs(out.last_hidden_state, out.pooler_output, input_ids.shape)
        loss = F.cross_entropy(_up(logits), labels.reshape(-1)) if labels is not None else None
        return _carry(out, loss=loss, logits=logits)

    def head_outputs(self, hidden, pooled, input_shape):
        # pooled: (B*C, H) from the flattened choices; input_shape (B, C, S).
        return (self.classifier(self.dropout(pooled)).view(-1, input_shape[1]),)  # (B, C)


def flat_choices(t: torch.Tensor | None) -> torch.Tensor | None:
    """Multiple-choice inputs (B, C, S) as the (B*C, S) rows the encoder runs (any (..., S) works)."""
    return None if t is None else t.reshape(-1, t.shape[-1])


HEADS = {c.__name__: c for c in (
    MobileBertModel, MobileBertForPreTraining, MobileBertForMaskedLM, MobileBertForNextSentencePrediction,
    MobileBertForSequenceClassification, MobileBertForQuestionAnswering, MobileBertForTokenClassification,
    MobileBertForMultipleChoice)}
# transformers' BERT class names map onto the same classes (config.model_type="bert" picks the layout).
HEADS.update({name.replace("MobileBert", "Bert"): cls for name, cls in list(HEADS.items())})


def load_model(path: str | os.PathLike, task: str | None = None, **config_overrides):
    """Load a checkpoint with the head class its config.json names (`architectures`), or `task`'s class."""
    cfg = load_config(path)
    name = task or (cfg.architectures[0] if cfg.architectures else "MobileBertModel")
    if name not in HEADS:
        raise ConfigError(f"{path}: architecture {name!r} is not one of {', '.join(sorted(HEADS))}")
    return load_pretrained(HEADS[name], path, config=cfg, **config_overrides)
