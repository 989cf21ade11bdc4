"""MobileBERT model configuration: every flag of the official config JSON and of HF's `MobileBertConfig`.

Paper §3 and Table 1 (arXiv 2004.02984); official TF1 code `google-research/mobilebert/modeling.py`
`BertConfig`; transformers `configuration_mobilebert.py`. One dataclass describes the whole family:
the MobileBERT student, MobileBERT_TINY, the IB-BERT_LARGE teacher and plain BERT (`model_type="bert"`,
which switches parameter names and layout to transformers' `BertModel`).

The config reads and writes both formats:
- Hugging Face `config.json` (has `model_type`; HF defaults apply to absent keys), and
- the official JSON (no `model_type`; the official `BertConfig` defaults apply, which differ: e.g.
  `normalization_type="layer_norm"`, `key_query_shared_bottleneck=false`, 12 layers of 768).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from mobilebert import atomic
from mobilebert.errors import ConfigError

ACTIVATIONS = ("relu", "relu6", "gelu", "gelu_new", "tanh")
NORMALIZATIONS = ("no_norm", "layer_norm")
POOLINGS = ("cls", "mean", "siamese")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")

# Generic keys transformers writes into every config.json; they carry no architecture information.
_HF_GENERIC_KEYS = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "tie_word_embeddings",
    "_name_or_path", "return_dict", "output_hidden_states", "output_attentions", "use_cache",
    "gradient_checkpointing", "position_embedding_type", "bos_token_id", "eos_token_id", "output_past",
    "is_decoder", "add_cross_attention", "chunk_size_feed_forward", "finetuning_task", "classifier_dropout_prob",
    "directionality", "pooler_fc_size", "pooler_num_attention_heads", "pooler_num_fc_layers",
    "pooler_size_per_head", "pooler_type", "_attn_implementation_autoset", "tokenizer_class", "prefix",
    "torchscript", "pruned_heads", "problem_type", "num_labels", "id2label", "label2id", "true_hidden_size",
    "task_specific_params", "sep_token_id", "decoder_start_token_id", "layer_norm_eps",
}

# Official BertConfig defaults (modeling.py), used for official JSON files, which omit defaults.
_OFFICIAL_DEFAULTS = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=16,
    initializer_range=0.02, embedding_size=None, trigram_input=False, use_bottleneck=False,
    intra_bottleneck_size=None, use_bottleneck_attention=False, key_query_shared_bottleneck=False,
    num_feedforward_networks=1, normalization_type="layer_norm", classifier_activation=True,
)
_OFFICIAL_KEYS = set(_OFFICIAL_DEFAULTS) | {"vocab_size"}
_BERT_KEYS = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
              "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
              "initializer_range", "vocab_size"}


@dataclass
class MobileBertConfig:
    """Architecture hyper-parameters; names and defaults follow HF's `MobileBertConfig`."""

    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 512  # h_inter: the inter-block (feature-map) width
    num_hidden_layers: int = 24
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    trigram_input: bool = True
    use_bottleneck: bool = True
    intra_bottleneck_size: int = 128  # h_intra: width inside each block
    use_bottleneck_attention: bool = False  # TINY: Q, K and V all read the input bottleneck
    key_query_shared_bottleneck: bool = True  # MobileBERT: Q and K share a bottleneck, V reads the 512-d input
    num_feedforward_networks: int = 4
    normalization_type: str = "no_norm"
    classifier_activation: bool = True  # pooler = tanh(dense(h[CLS])); False: pooler = raw h[CLS]
    classifier_dropout: float | None = None
    # What the pooler reads: "cls" the [CLS] state (BERT, transformers), "mean" the mean of the last-layer states
    # over real tokens (sentence-transformers' pooling; the key and values of ModernBERT's config). transformers'
    # MobileBERT and BERT classes ignore the key and always pool [CLS]; written to config.json unless "cls".
    # "siamese": a pair's two sentences are encoded apart and the classifier reads [u, v, |u - v|, u * v] of their
    # means (sentence-transformers' bi-encoder; heads.siamese_rows). transformers cannot load that classifier.
    classifier_pooling: str = "cls"
    model_type: str = "mobilebert"  # "mobilebert" or "bert" (parameter names and layout of transformers' BERT)
    # Task-head settings, stored in config.json as transformers does.
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    architectures: list[str] | None = None

    def __post_init__(self):
        self.validate()

    @property
    def true_hidden_size(self) -> int:
        """Width inside a block: the bottleneck width when bottlenecks are used."""
        return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

    @property
    def base_prefix(self) -> str:
        """State-dict prefix of the base model inside a model with heads."""
        return "bert" if self.model_type == "bert" else "mobilebert"

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def bad(key: str, why: str):
            raise ConfigError(f"{key}: {why}")

        for key in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size", "intra_bottleneck_size",
                    "num_feedforward_networks", "num_labels"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(key, f"must be a positive integer, got {v!r}")
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            v = getattr(self, key)
            if v is not None and not (0.0 <= float(v) < 1.0):
                bad(key, f"must be in [0, 1), got {v!r}")
        if self.hidden_act not in ACTIVATIONS:
            bad("hidden_act", f"{self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.normalization_type not in NORMALIZATIONS:
            bad("normalization_type", f"{self.normalization_type!r} is not one of {', '.join(NORMALIZATIONS)}")
        if self.model_type not in ("mobilebert", "bert"):
            bad("model_type", f"{self.model_type!r} is not 'mobilebert' or 'bert'")
        if self.classifier_pooling not in POOLINGS:
            bad("classifier_pooling", f"{self.classifier_pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.problem_type not in PROBLEM_TYPES:
            bad("problem_type", f"{self.problem_type!r} is not one of {PROBLEM_TYPES[1:]}")
        if self.true_hidden_size % self.num_attention_heads:
            width = "intra_bottleneck_size" if self.use_bottleneck else "hidden_size"
            bad("num_attention_heads", f"{width}={self.true_hidden_size} is not divisible by "
                                       f"num_attention_heads={self.num_attention_heads}")
        if self.use_bottleneck_attention and self.key_query_shared_bottleneck:
            bad("key_query_shared_bottleneck", "contradicts use_bottleneck_attention=true (Q, K and V already "
                                               "share the input bottleneck); set one of them to false")
        if not self.use_bottleneck and (self.use_bottleneck_attention or self.key_query_shared_bottleneck):
            key = "use_bottleneck_attention" if self.use_bottleneck_attention else "key_query_shared_bottleneck"
            bad(key, "needs use_bottleneck=true")
        if self.model_type == "bert":
            for key, want in (("use_bottleneck", False), ("trigram_input", False), ("num_feedforward_networks", 1),
                              ("normalization_type", "layer_norm"), ("embedding_size", self.hidden_size)):
                if getattr(self, key) != want:
                    bad(key, f"must be {want!r} for model_type='bert' (got {getattr(self, key)!r})")
        if self.trigram_input is False and self.model_type == "mobilebert" and self.embedding_size > self.hidden_size:
            bad("embedding_size", f"{self.embedding_size} is wider than hidden_size={self.hidden_size}")
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            if len(self.id2label) != self.num_labels:
                self.num_labels = len(self.id2label)

    def replace(self, **changes) -> "MobileBertConfig":
        """A copy with some fields changed (checked again); unknown names are errors."""
        names = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                raise ConfigError(f"{key}: unknown model setting")
        if "num_labels" in changes and "id2label" not in changes:
            changes["id2label"] = None
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF config.json
    def to_hf_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("id2label")
        d.pop("num_labels")
        if self.model_type == "bert":
            for key in ("embedding_size", "trigram_input", "use_bottleneck", "intra_bottleneck_size",
                        "use_bottleneck_attention", "key_query_shared_bottleneck", "num_feedforward_networks",
                        "normalization_type", "classifier_activation"):
                d.pop(key)
            d["position_embedding_type"] = "absolute"
        else:
            d["true_hidden_size"] = self.true_hidden_size
        id2label = self.id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        d["id2label"] = {str(k): v for k, v in id2label.items()}
        d["label2id"] = {v: k for k, v in id2label.items()}
        d["tie_word_embeddings"] = True
        if d["architectures"] is None:
            d.pop("architectures")
        if d["problem_type"] is None:
            d.pop("problem_type")
        if d["classifier_pooling"] == "cls":
            d.pop("classifier_pooling")  # the default: config.json stays what transformers writes
        return d

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config") -> "MobileBertConfig":
        model_type = d.get("model_type", "mobilebert")
        if model_type not in ("mobilebert", "bert"):
            raise ConfigError(f"{source}: model_type={model_type!r} is not a MobileBERT or BERT model")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{source}: position_embedding_type={d['position_embedding_type']!r} is not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.items():
            if key in names:
                kwargs[key] = value
            elif key not in _HF_GENERIC_KEYS:
                raise ConfigError(f"{source}: unknown key {key!r}")
        if model_type == "bert":
            # BERT: no bottleneck, no trigram, LayerNorm, one FFN, tanh pooler; embeddings as wide as hidden.
            kwargs.update(embedding_size=d.get("hidden_size", 768), trigram_input=False, use_bottleneck=False,
                          use_bottleneck_attention=False, key_query_shared_bottleneck=False,
                          num_feedforward_networks=1, normalization_type="layer_norm", classifier_activation=True)
            kwargs.setdefault("hidden_size", 768)
            kwargs.setdefault("intra_bottleneck_size", kwargs["hidden_size"])
            for key, default in (("num_hidden_layers", 12), ("num_attention_heads", 12), ("intermediate_size", 3072),
                                 ("hidden_act", "gelu"), ("hidden_dropout_prob", 0.1)):
                kwargs.setdefault(key, default)
        if "id2label" in d:
            id2label = {int(k): v for k, v in d["id2label"].items()}
            kwargs["num_labels"] = len(id2label)
            # transformers writes LABEL_i names when none were given; keep "none given" as None.
            kwargs["id2label"] = None if id2label == {i: f"LABEL_{i}" for i in range(len(id2label))} else id2label
        elif "num_labels" in d:
            kwargs["num_labels"] = d["num_labels"]
        if "layer_norm_eps" in d:
            kwargs["layer_norm_eps"] = d["layer_norm_eps"]
        try:
            cfg = cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        if "true_hidden_size" in d and d["true_hidden_size"] != cfg.true_hidden_size:
            raise ConfigError(f"{source}: true_hidden_size={d['true_hidden_size']} contradicts "
                              f"intra_bottleneck_size/use_bottleneck (expected {cfg.true_hidden_size})")
        return cfg

    # ------------------------------------------------------------------ official JSON
    def to_official_dict(self) -> dict:
        if self.model_type == "bert":
            keys = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                    "type_vocab_size", "initializer_range", "vocab_size"]
        else:
            keys = sorted(_OFFICIAL_KEYS)
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_official_dict(cls, d: dict, source: str = "config") -> "MobileBertConfig":
        for key in d:
            if key not in _OFFICIAL_KEYS:
                raise ConfigError(f"{source}: unknown key {key!r} in official config")
        if not any(k in d for k in _OFFICIAL_DEFAULTS if k not in _BERT_KEYS):
            # No MobileBERT key at all: a google-research/bert `bert_config.json`.
            return cls.from_hf_dict({**d, "model_type": "bert"}, source=source)
        if d.get("normalization_type") == "manual_layer_norm":
            raise ConfigError(f"{source}: normalization_type='manual_layer_norm' is not supported; "
                              "use 'layer_norm' (the same function with a learned affine)")
        kw = {**_OFFICIAL_DEFAULTS, **d}
        kw["embedding_size"] = kw["embedding_size"] or kw["hidden_size"]
        kw["intra_bottleneck_size"] = kw["intra_bottleneck_size"] or kw["hidden_size"]
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    # ------------------------------------------------------------------ files
    @classmethod
    def from_json_file(cls, path: str | Path) -> "MobileBertConfig":
        """Read HF `config.json` (has `model_type`) or an official MobileBERT/BERT JSON (does not)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        if "model_type" in d:
            return cls.from_hf_dict(d, source=str(path))
        return cls.from_official_dict(d, source=str(path))

    def save(self, path: str | Path, official: bool = False) -> None:
        d = self.to_official_dict() if official else self.to_hf_dict()
        atomic.write_json(path, d, indent=2, sort_keys=True)
