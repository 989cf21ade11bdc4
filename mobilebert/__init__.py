"""MobileBERT in PyTorch: the model family, checkpoints in the Hugging Face layout, and the jobs that
train, fine-tune, quantize and export it (Sun et al., ACL 2020, arXiv 2004.02984)."""

from mobilebert.config import MobileBertConfig
from mobilebert.heads import (
    MobileBertForMaskedLM,
    MobileBertForMultipleChoice,
    MobileBertForNextSentencePrediction,
    MobileBertForPreTraining,
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
    MobileBertForTokenClassification,
)
from mobilebert.model import MobileBertModel, ModelOutput
from mobilebert.presets import get_config, list_presets
from mobilebert.tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = [
    "MobileBertConfig", "MobileBertModel", "ModelOutput", "MobileBertForPreTraining", "MobileBertForMaskedLM",
    "MobileBertForNextSentencePrediction", "MobileBertForSequenceClassification", "MobileBertForQuestionAnswering",
    "MobileBertForTokenClassification", "MobileBertForMultipleChoice", "get_config", "list_presets", "Tokenizer",
]
