"""Zero-shot sentence similarity: how much a pre-trained encoder already knows, with no fine-tuning at all.

The knowledge-transfer study (benchmarks/kt_study.py, issue 11) scores every student and its teacher this way,
as sentence-transformers scores all-MiniLM-L6-v2 on STS-B: each sentence is encoded alone
(`[CLS] sentence [SEP]`), its last-layer token states are mean-pooled over the real tokens, a pair's score is
the cosine similarity of the two pooled vectors, and the result is the Spearman correlation of those scores
with the gold similarity scores (STS-B dev: 1,500 pairs). It works for any of our base models (BERT,
MobileBERT, IB-BERT) or a model with heads (its `base_model` is used); no parameter is changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilebert.errors import DataError
from mobilebert.model import masked_mean
from mobilebert.tasks import metrics as M


def read_sts_pairs(dev_tsv_path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(sentence1s, sentence2s, gold scores) of an STS-B-format file (GLUE's STS-B/dev.tsv); DataError if empty."""
    from mobilebert.tasks.glue import get_task, read_examples

    res = read_examples(get_task("sts-b"), dev_tsv_path, "dev", on_bad_row="error")
    if not res.examples:
        raise DataError(f"{dev_tsv_path}: no sentence pairs")
    ex = res.examples
    return [e.text_a for e in ex], [e.text_b for e in ex], np.array([float(e.label) for e in ex])


def mean_pooled(model, tokenizer, sentences: list[str], max_length: int = 128, batch_size: int = 64,
                every_layer: bool = False):
    """(N, hidden) float32 tensor: each sentence's last-layer states averaged over its real tokens.

    every_layer: (L + 1, N, hidden) instead, the embedding output then each layer's output, pooled alike."""
    import torch

    base = getattr(model, "base_model", model)
    device = next(base.parameters()).device
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # similar lengths: less padding
    out = [None] * len(sentences)
    was = base.training
    base.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                enc = tokenizer([sentences[j] for j in idx], max_length=max_length, padding="longest")
                enc = {k: v.to(device) for k, v in enc.items()}
                res = base(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"],
                           output_hidden_states=every_layer)
                h = torch.stack(res.hidden_states) if every_layer else res.last_hidden_state[None]  # (K, B, S, H)
                pooled = masked_mean(h, enc["attention_mask"][None])                               # (K, B, H)
                for j, v in zip(idx, pooled.float().cpu().unbind(1)):
                    out[j] = v
    finally:
        base.train(was)
    emb = torch.stack(out, 1)  # (K, N, H)
    return emb if every_layer else emb[0]


def zero_shot_sts(model, tokenizer, dev_tsv_path, max_length: int = 128, batch_size: int = 64) -> float:
    """Spearman correlation between cosine similarities of mean-pooled last-layer states and the gold scores.

    Args:
        model: any of our base models or a model with heads (`MobileBertModel`, `MobileBertForPreTraining`, ...).
        tokenizer: a `mobilebert.tokenizer.Tokenizer` matching the model's vocabulary.
        dev_tsv_path: an STS-B-format TSV with sentence1, sentence2 and score columns (GLUE STS-B/dev.tsv).
        max_length: longer sentences are truncated to this many tokens ([CLS] and [SEP] included).
    """
    import torch.nn.functional as F

    a, b, gold = read_sts_pairs(dev_tsv_path)
    emb = mean_pooled(model, tokenizer, a + b, max_length, batch_size)  # (2N, H)
    cos = F.cosine_similarity(emb[:len(a)], emb[len(a):], dim=-1)       # (N,)
    return float(M.spearman(cos.numpy().astype(np.float64), gold))


def pair_cosines_by_layer(model, tokenizer, a: list[str], b: list[str], max_length: int = 128,
                          batch_size: int = 64) -> np.ndarray:
    """(L + 1, N) cosine similarity of each pair's mean-pooled states at the embedding output and every layer."""
    import torch.nn.functional as F

    emb = mean_pooled(model, tokenizer, a + b, max_length, batch_size, every_layer=True)   # (L + 1, 2N, H)
    return F.cosine_similarity(emb[:, :len(a)], emb[:, len(a):], dim=-1).numpy().astype(np.float64)
