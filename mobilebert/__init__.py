"""MobileBERT in PyTorch: the model family, checkpoints in the Hugging Face layout, and the jobs that
train, fine-tune, quantize and export it (Sun et al., ACL 2020, arXiv 2004.02984).

Names are imported lazily (PEP 562), so `mobilebert --help` and other light commands do not pay for
importing torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "MobileBertConfig": "mobilebert.config",
    "MobileBertModel": "mobilebert.model",
    "ModelOutput": "mobilebert.model",
    "MobileBertForPreTraining": "mobilebert.heads",
    "MobileBertForMaskedLM": "mobilebert.heads",
    "MobileBertForNextSentencePrediction": "mobilebert.heads",
    "MobileBertForSequenceClassification": "mobilebert.heads",
    "MobileBertForQuestionAnswering": "mobilebert.heads",
    "MobileBertForTokenClassification": "mobilebert.heads",
    "MobileBertForMultipleChoice": "mobilebert.heads",
    "get_config": "mobilebert.presets",
    "list_presets": "mobilebert.presets",
    "Tokenizer": "mobilebert.tokenizer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mobilebert' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
