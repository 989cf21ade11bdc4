"""Model presets: plain builder functions in one registry (paper Table 1; official configs in
google-research/mobilebert/config/*.json).

`get_config("mobilebert")` is the released OPT model (`uncased_L-24_H-128_B-512_A-4_F-4_OPT`); the
teacher `ibbert-large` is `uncased_L-24_H-1024_B-512_A-4` (IB-BERT_LARGE: Q, K and V read the 512-d
inter-block features and project to 1024; transformers cannot build it). `debug-*` presets are tiny
models for tests; they keep the real 30,522-token vocabulary so that they run on real text.
"""

from __future__ import annotations

from typing import Callable

from mobilebert.config import MobileBertConfig
from mobilebert.errors import ConfigError

PRESETS: dict[str, Callable[[], MobileBertConfig]] = {}


def register(name: str):
    def deco(fn: Callable[[], MobileBertConfig]):
        PRESETS[name] = fn
        return fn
    return deco


@register("mobilebert")
def mobilebert() -> MobileBertConfig:
    """MobileBERT (OPT): NoNorm + ReLU, shared Q/K bottleneck, 4 FFNs. The released config has no pooler dense."""
    return MobileBertConfig(classifier_activation=False)


@register("mobilebert-tiny")
def mobilebert_tiny() -> MobileBertConfig:
    """MobileBERT_TINY: Q, K and V all read the 128-d input bottleneck; 2 FFNs."""
    return MobileBertConfig(use_bottleneck_attention=True, key_query_shared_bottleneck=False,
                            num_feedforward_networks=2, classifier_activation=False)


@register("mobilebert-no-opt")
def mobilebert_no_opt() -> MobileBertConfig:
    """MobileBERT w/o OPT (Table 4 last row): LayerNorm and GELU instead of NoNorm and ReLU."""
    return MobileBertConfig(normalization_type="layer_norm", hidden_act="gelu", classifier_activation=False)


@register("mobilebert-qat")
def mobilebert_qat() -> MobileBertConfig:
    """The official QAT config: ReLU6 (bounded activations for 8-bit fake quantization)."""
    return MobileBertConfig(hidden_act="relu6", classifier_activation=False)


@register("ibbert-large")
def ibbert_large() -> MobileBertConfig:
    """IB-BERT_LARGE teacher (Table 1): 512-d inter-block features, 1024-d blocks, 4 heads, 1 FFN of 4096.

    classifier_activation=False (as the TF2 teacher config) so the NSP head the student copies reads raw h[CLS].
    """
    return MobileBertConfig(intra_bottleneck_size=1024, intermediate_size=4096, num_feedforward_networks=1,
                            key_query_shared_bottleneck=False, normalization_type="layer_norm", hidden_act="gelu",
                            hidden_dropout_prob=0.1, classifier_activation=False)


@register("bert-base")
def bert_base() -> MobileBertConfig:
    return MobileBertConfig.from_hf_dict({"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
                                          "num_attention_heads": 12, "intermediate_size": 3072})


@register("bert-large")
def bert_large() -> MobileBertConfig:
    return MobileBertConfig.from_hf_dict({"model_type": "bert", "hidden_size": 1024, "num_hidden_layers": 24,
                                          "num_attention_heads": 16, "intermediate_size": 4096})


@register("debug-mobilebert")
def debug_mobilebert() -> MobileBertConfig:
    """A 4-layer MobileBERT in miniature (64-d inter-block, 32-d bottleneck) for tests."""
    return MobileBertConfig(embedding_size=32, hidden_size=64, intra_bottleneck_size=32, intermediate_size=64,
                            num_hidden_layers=4, num_attention_heads=4, num_feedforward_networks=2,
                            max_position_embeddings=512, classifier_activation=False)


@register("debug-ibbert")
def debug_ibbert() -> MobileBertConfig:
    """A 4-layer IB-BERT teacher in miniature whose inter-block width and heads fit `debug-mobilebert`."""
    return MobileBertConfig(embedding_size=32, hidden_size=64, intra_bottleneck_size=128, intermediate_size=256,
                            num_hidden_layers=4, num_attention_heads=4, num_feedforward_networks=1,
                            key_query_shared_bottleneck=False, normalization_type="layer_norm", hidden_act="gelu",
                            hidden_dropout_prob=0.1, classifier_activation=False)


@register("debug-bert")
def debug_bert() -> MobileBertConfig:
    return MobileBertConfig.from_hf_dict({"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
                                          "num_attention_heads": 4, "intermediate_size": 128})


def list_presets() -> list[str]:
    return list(PRESETS)


def get_config(name: str, **overrides) -> MobileBertConfig:
    """The preset `name` with some fields changed, e.g. `get_config("mobilebert", num_labels=3)`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg
