"""The MobileBERT forward pass, whole, in one file (paper §3, Figure 1 and Table 1).

One set of classes builds the MobileBERT student, MobileBERT_TINY, the IB-BERT_LARGE teacher and plain
BERT; the config decides. Parameter names match transformers' `MobileBertModel` (and `BertModel` for
`model_type="bert"`) so checkpoints load both ways with no conversion.

Per-layer dataflow (official `modeling.py::transformer_model`), x is the 512-d inter-block input:
    layer_input = N(Lin(x: 512->intra))                       bottleneck.input
    q, k, v     = layer_input x3              (TINY: use_bottleneck_attention)
                | s, s, x with s = N(Lin(x))  (MobileBERT: key_query_shared_bottleneck)
                | x, x, x                     (IB-BERT teacher: Q/K/V read the 512-d x, project to intra)
    a = N(Lin(MHA(q, k, v)) + layer_input)                    attention.output
    a = N(Lin(act(Lin(a))) + a)   x (F - 1)                   ffn.{j}
    h = N(Lin(act(Lin(a))) + a)                               intermediate, output
    y = N(Dropout(Lin(h: intra->512)) + x)                    output.bottleneck
N is NoNorm (`x*w + b`, eq. 1) or LayerNorm. In bottleneck mode the only hidden dropout inside a layer
is the one after output.bottleneck.dense (as the official code places it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mobilebert.checkpoint import load_pretrained, save_pretrained
from mobilebert.config import MobileBertConfig
from mobilebert.errors import UserError

FP16_MAX = 65504.0
ACT2FN = {
    "relu": F.relu,
    "relu6": F.relu6,
    "gelu": F.gelu,  # exact erf form, as transformers' "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "tanh": torch.tanh,
}


class PrecisionError(UserError):
    """Activations left the range of the compute dtype (fp16)."""


@dataclass
class ModelOutput:
    """What every model returns; fields a model does not compute stay None."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None  # MLM (B, S, V) for pre-training
    seq_relationship_logits: torch.Tensor | None = None  # NSP (B, 2)
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None  # QA (B, S)
    end_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None  # (B, S, hidden_size)
    pooler_output: torch.Tensor | None = None  # (B, hidden_size)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings, then each layer's output
    attentions: tuple[torch.Tensor, ...] | None = None  # post-softmax (B, heads, S, S) per layer
    attention_scores: tuple[torch.Tensor, ...] | None = None  # masked, scaled, pre-softmax, per layer


class NoNorm(nn.Module):
    """NoNorm(h) = gamma * h + beta (eq. 1): LayerNorm's affine part without the normalisation."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


def make_norm(cfg: MobileBertConfig, size: int, eps: float) -> nn.Module:
    return NoNorm(size) if cfg.normalization_type == "no_norm" else nn.LayerNorm(size, eps=eps)


def quirk_eps(cfg: MobileBertConfig) -> float:
    """transformers builds two MobileBERT norms without `eps` (torch's 1e-5); we match it for parity."""
    return cfg.layer_norm_eps if cfg.model_type == "bert" else 1e-5


class MobileBertEmbeddings(nn.Module):
    """Word (128-d) -> trigram concat [next, cur, prev] (384) -> Linear to 512 -> + position + type -> N."""

    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.trigram_input = cfg.trigram_input
        self.transform = cfg.model_type == "mobilebert" and (cfg.trigram_input or cfg.embedding_size != cfg.hidden_size)
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.embedding_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        if cfg.model_type == "mobilebert":
            self.embedding_transformation = nn.Linear(cfg.embedding_size * (3 if cfg.trigram_input else 1),
                                                      cfg.hidden_size)
        self.LayerNorm = make_norm(cfg, cfg.hidden_size, quirk_eps(cfg))
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings)[None], persistent=False)

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        seq_len = input_ids.shape[1]
        if seq_len > self.position_ids.shape[1]:
            raise UserError(f"sequence of {seq_len} tokens is longer than the model's "
                            f"max_position_embeddings={self.position_ids.shape[1]}")
        if position_ids is None:
            position_ids = self.position_ids[:, :seq_len]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        e = self.word_embeddings(input_ids)  # (B, S, E)
        if self.trigram_input:
            # Kernel-3 convolution as a concat: token t sees t+1, t, t-1 (zero-padded at the ends).
            e = torch.cat([F.pad(e[:, 1:], (0, 0, 0, 1)), e, F.pad(e[:, :-1], (0, 0, 1, 0))], dim=2)  # (B, S, 3E)
        if self.transform:
            e = self.embedding_transformation(e)  # (B, S, H)
        e = e + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(e))


class MobileBertSelfAttention(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_size = cfg.true_hidden_size // cfg.num_attention_heads
        self.scale = 1.0 / math.sqrt(self.head_size)  # a constant, so the export graph computes no Sqrt
        width = cfg.true_hidden_size
        # Q/K read the shared bottleneck (MobileBERT), the input bottleneck (TINY), or the 512-d input (teacher).
        qk_in = width if (cfg.use_bottleneck_attention or cfg.key_query_shared_bottleneck) else cfg.hidden_size
        v_in = width if cfg.use_bottleneck_attention else cfg.hidden_size
        self.query = nn.Linear(qk_in, width)
        self.key = nn.Linear(qk_in, width)
        self.value = nn.Linear(v_in, width)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)

    def heads(self, q_in, k_in, v_in, mask_add):
        """(q, k, v) as (B, heads, S, d), and a function that merges a (B, heads, S, d) context back.

        q_in: (B, S, in), or token-major (B*S, in) as the export graph runs it (there mask_add, (B, 1, 1, S),
        gives S): every linear then sees a 2-D input, which ONNX Runtime fuses with its bias into one Gemm."""
        flat = q_in.dim() == 2
        S = mask_add.shape[-1] if flat else q_in.shape[1]
        split = lambda t: t.view(-1, S, self.num_heads, self.head_size).transpose(1, 2)
        width = self.num_heads * self.head_size
        merge = lambda c: c.transpose(1, 2).contiguous().view((-1, width) if flat else (c.shape[0], S, width))
        return split(self.query(q_in)), split(self.key(k_in)), split(self.value(v_in)), merge

    def forward(self, q_in, k_in, v_in, mask_add, want_maps: bool):
        q, k, v, merge = self.heads(q_in, k_in, v_in, mask_add)
        if not want_maps:
            p = self.dropout.p if self.training else 0.0
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_add, dropout_p=p, scale=self.scale)
            return merge(ctx), None, None
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, heads, S, S)
        if mask_add is not None:
            scores = scores + mask_add.to(scores.dtype)
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(self.dropout(probs), v)
        return merge(ctx), probs, scores


class MobileBertSelfOutput(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.true_hidden_size, cfg.true_hidden_size)
        self.LayerNorm = make_norm(cfg, cfg.true_hidden_size, cfg.layer_norm_eps)
        self.dropout = nn.Identity() if cfg.use_bottleneck else nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, ctx, residual):
        return self.LayerNorm(self.dropout(self.dense(ctx)) + residual)


class MobileBertAttention(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.self = MobileBertSelfAttention(cfg)
        self.output = MobileBertSelfOutput(cfg)


class MobileBertIntermediate(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.true_hidden_size, cfg.intermediate_size)
        self.act = ACT2FN[cfg.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class OutputBottleneck(nn.Module):
    """intra -> 512 with the 512-d residual from the block input; the one hidden dropout of the block."""

    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.true_hidden_size, cfg.hidden_size)
        self.LayerNorm = make_norm(cfg, cfg.hidden_size, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, h, residual):
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class MobileBertOutput(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.use_bottleneck = cfg.use_bottleneck
        self.dense = nn.Linear(cfg.intermediate_size, cfg.true_hidden_size)
        self.LayerNorm = make_norm(cfg, cfg.true_hidden_size, quirk_eps(cfg))
        if cfg.use_bottleneck:
            self.bottleneck = OutputBottleneck(cfg)
        else:
            self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, inter, residual, block_input):
        if not self.use_bottleneck:
            return self.LayerNorm(self.dropout(self.dense(inter)) + residual)
        return self.bottleneck(self.LayerNorm(self.dense(inter) + residual), block_input)


class BottleneckLayer(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intra_bottleneck_size)
        self.LayerNorm = make_norm(cfg, cfg.intra_bottleneck_size, cfg.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.dense(x))


class Bottleneck(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.input = BottleneckLayer(cfg)
        if cfg.key_query_shared_bottleneck:
            self.attention = BottleneckLayer(cfg)


class FFNOutput(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.true_hidden_size)
        self.LayerNorm = make_norm(cfg, cfg.true_hidden_size, cfg.layer_norm_eps)


class FFNLayer(nn.Module):
    """One of the F-1 extra stacked FFNs (paper §3.1: keeps the MHA:FFN parameter ratio)."""

    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.intermediate = MobileBertIntermediate(cfg)
        self.output = FFNOutput(cfg)

    def forward(self, a):
        return self.output.LayerNorm(self.output.dense(self.intermediate(a)) + a)


class MobileBertLayer(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.use_bottleneck = cfg.use_bottleneck
        self.use_bottleneck_attention = cfg.use_bottleneck_attention
        self.key_query_shared_bottleneck = cfg.key_query_shared_bottleneck
        self.attention = MobileBertAttention(cfg)
        self.intermediate = MobileBertIntermediate(cfg)
        self.output = MobileBertOutput(cfg)
        if cfg.use_bottleneck:
            self.bottleneck = Bottleneck(cfg)
        if cfg.num_feedforward_networks > 1:
            self.ffn = nn.ModuleList(FFNLayer(cfg) for _ in range(cfg.num_feedforward_networks - 1))

    def forward(self, x, mask_add, want_maps: bool = False):
        # x: (B, S, hidden_size), the inter-block feature map.
        if self.use_bottleneck:
            layer_input = self.bottleneck.input(x)  # (B, S, intra)
            if self.use_bottleneck_attention:
                q_in = k_in = v_in = layer_input
            elif self.key_query_shared_bottleneck:
                q_in = k_in = self.bottleneck.attention(x)
                v_in = x
            else:
                q_in = k_in = v_in = x
        else:
            layer_input = q_in = k_in = v_in = x
        ctx, probs, scores = self.attention.self(q_in, k_in, v_in, mask_add, want_maps)
        a = self.attention.output(ctx, layer_input)  # (B, S, intra)
        for ffn in getattr(self, "ffn", ()):
            a = ffn(a)
        y = self.output(self.intermediate(a), a, x)  # (B, S, hidden_size)
        return y, probs, scores


class MobileBertEncoder(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(MobileBertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, h, mask_add, want_maps: bool = False, num_layers: int | None = None,
                checkpointing: bool = False, fp16_guard: bool = False):
        """The layer stack on h (B, S, H), or token-major (B*S, H) as the export runs it.

        Returns (last h, [embeddings h, each layer's h], per-layer maps, per-layer scores); the maps are
        None unless want_maps. checkpointing: recompute each layer in the backward pass (saves memory).
        fp16_guard: stop with PrecisionError when a layer's output leaves fp16's range."""
        layers = self.layer if num_layers is None else self.layer[:num_layers]
        hidden, probs, scores = [h], [], []
        for i, layer in enumerate(layers):
            if checkpointing:
                h, p, s = checkpoint(layer, h, mask_add, want_maps, use_reentrant=False)
            else:
                h, p, s = layer(h, mask_add, want_maps)
            if fp16_guard:
                check_fp16_range(h, f"at the output of layer {i + 1} of {len(layers)}")
            hidden.append(h)
            probs.append(p)
            scores.append(s)
        return h, hidden, probs, scores


class MobileBertPooler(nn.Module):
    def __init__(self, cfg: MobileBertConfig):
        super().__init__()
        self.do_activate = cfg.classifier_activation
        self.mean = cfg.classifier_pooling == "mean"
        if self.do_activate:
            self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, h, attention_mask=None):
        """h: (B, S, H) last-layer states; attention_mask (B, S) 0/1 or None (every token real) -> (B, H)."""
        if self.mean:
            pooled = masked_mean(h, attention_mask)
        else:
            pooled = h[:, 0]  # (B, H): the [CLS] token
        return torch.tanh(self.dense(pooled)) if self.do_activate else pooled


def masked_mean(h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(..., S, H) states averaged over the real tokens of a (..., S) 0/1 mask (all of them if None) -> (..., H).

    Pad tokens weigh nothing, so a sentence pools to the same vector however far its batch is padded."""
    if attention_mask is None:
        return h.mean(-2)
    m = attention_mask[..., None].to(h.dtype)  # (..., S, 1)
    return (h * m).sum(-2) / m.sum(-2).clamp_min(1.0)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive key mask (B, 1, 1, S) from a (B, S) 0/1 mask: 0 where attended, the dtype's minimum where
    padded (as transformers)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _fp16_active(x: torch.Tensor) -> bool:
    if x.dtype == torch.float16:
        return True
    dev = x.device.type
    if dev not in ("cpu", "cuda", "xpu", "mps"):
        return False  # e.g. the meta device used for FLOP counting
    return torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.float16


def check_fp16_range(h: torch.Tensor, where: str) -> None:
    """NoNorm does not rescale, so trained MobileBERT activations outgrow fp16 (transformers#11327):
    stop with a clear message instead of training on inf/NaN. One reduction per layer, in fp16 only."""
    peak = h.detach().abs().amax().item()
    if not peak <= FP16_MAX:  # also catches NaN
        raise PrecisionError(f"fp16 overflow {where} (max |activation| {peak:.3g} > {FP16_MAX:.0f}, fp16's largest "
                             "value): MobileBERT's NoNorm does not rescale activations; use bf16 or fp32 instead")


class PreTrainedMixin:
    """Hugging Face-layout checkpoints (config.json + model.safetensors); see mobilebert.checkpoint."""

    def save_pretrained(self, folder) -> None:
        save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, path, dtype=None, **config_overrides):
        """Load config.json + weights from `path`; `config_overrides` change config fields (e.g. num_labels)."""
        return load_pretrained(cls, path, dtype=dtype, **config_overrides)


class MobileBertModel(PreTrainedMixin, nn.Module):
    """Embeddings + encoder (+ pooler). Returns a ModelOutput with last_hidden_state and pooler_output."""

    def __init__(self, cfg: MobileBertConfig, add_pooling_layer: bool = True, init: bool = True):
        super().__init__()
        self.config = cfg
        self.embeddings = MobileBertEmbeddings(cfg)
        self.encoder = MobileBertEncoder(cfg)
        self.pooler = MobileBertPooler(cfg) if add_pooling_layer else None
        self.gradient_checkpointing = False
        if init:
            init_weights(self, cfg)

    @property
    def base_model(self) -> "MobileBertModel":
        return self

    @property
    def output_names(self) -> tuple[str, ...]:
        """The ModelOutput fields `head_outputs` returns, in order (the exported graph's outputs)."""
        return ("last_hidden_state", "pooler_output") if self.pooler is not None else ("last_hidden_state",)

    def head_outputs(self, hidden, pooled, input_shape) -> tuple[torch.Tensor, ...]:
        """The base model has no head: its outputs are the hidden states (and the pooled [CLS])."""
        return (hidden,) if pooled is None else (hidden, pooled)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                output_attention_scores: bool = False, num_layers: int | None = None) -> ModelOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        h = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, S, H)
        mask_add = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask_add = additive_mask(attention_mask, h.dtype)
        want_maps = output_attentions or output_attention_scores
        h, hidden, probs, scores = self.encoder(h, mask_add, want_maps, num_layers,
                                                checkpointing=self.gradient_checkpointing and self.training,
                                                fp16_guard=_fp16_active(h))
        return ModelOutput(
            last_hidden_state=h,
            pooler_output=self.pooler(h, attention_mask) if self.pooler is not None else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(probs) if output_attentions else None,
            attention_scores=tuple(scores) if output_attention_scores else None,
        )


def init_weights(module: nn.Module, cfg: MobileBertConfig) -> None:
    """transformers' init: N(0, initializer_range) weights, zero biases, unit norms, zero padding row."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, cfg.initializer_range)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, cfg.initializer_range)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, (nn.LayerNorm, NoNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
