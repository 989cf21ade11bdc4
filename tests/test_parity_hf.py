"""Parity with transformers: HF models with random weights -> HF files -> our production loader.

Every output (all hidden states, attentions, MLM/NSP/QA/classification logits, losses) and every
parameter's gradient must agree: float64 within 1e-9 relative, float32 within 1e-5 relative. Relative
to the tensor's largest magnitude, because MobileBERT activations span 1 to 1e8.
"""

import itertools

import pytest
import torch
import transformers as hf

import mobilebert as mb
from mobilebert.checkpoint import read_state_dict

V, S, B = 97, 11, 3


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, norms included (they init to 1/0, which would hide swapped params)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.05)


def inputs(num_choices: int | None = None):
    g = torch.Generator().manual_seed(1)
    shape = (B, S) if num_choices is None else (B, num_choices, S)
    ids = torch.randint(1, V, shape, generator=g)
    types = torch.zeros_like(ids)
    types[..., S // 2:] = 1
    mask = torch.ones_like(ids)
    mask[1, ..., S - 4:] = 0  # a padded row
    ids = ids.masked_fill(mask == 0, 0)
    return dict(input_ids=ids, token_type_ids=types, attention_mask=mask)


def hf_mobilebert_config(**kw):
    base = dict(vocab_size=V, embedding_size=16, hidden_size=32, intra_bottleneck_size=24, intermediate_size=40,
                num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64, classifier_activation=True,
                hidden_dropout_prob=0.1, attn_implementation="eager")
    base.update(kw)
    return hf.MobileBertConfig(**base)


def compare(ours, theirs, kwargs, dtype, labels=None):
    """Run both models on the same inputs; check outputs, losses and every gradient."""
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    ours.eval(), theirs.eval()
    kwargs = {**kwargs, **(labels or {})}
    a = ours(**kwargs, output_hidden_states=True, output_attentions=True)
    b = theirs(**kwargs, output_hidden_states=True, output_attentions=True)
    checked = 0
    for name in ("prediction_logits", "seq_relationship_logits", "logits", "start_logits", "end_logits",
                 "last_hidden_state", "pooler_output"):
        x, y = getattr(a, name, None), getattr(b, name, None)
        if x is not None and y is not None:
            assert rel(x, y) <= tol, f"{name}: {rel(x, y)}"
            checked += 1
    assert checked >= 1
    for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states, strict=True)):
        assert rel(x, y) <= tol, f"hidden_states[{i}]: {rel(x, y)}"
    for i, (x, y) in enumerate(zip(a.attentions, b.attentions, strict=True)):
        assert rel(x, y) <= tol, f"attentions[{i}]: {rel(x, y)}"
    if labels:
        assert rel(a.loss, b.loss) <= tol
        a.loss.backward()
        b.loss.backward()
        theirs_params = dict(theirs.named_parameters())
        # Some gradients are zero in exact arithmetic (a key bias cannot change a softmax) and hold only
        # rounding noise; measure those against the largest gradient of the model, not their own size.
        floor = 1e-6 * max(q.grad.abs().max().item() for q in theirs_params.values() if q.grad is not None)
        n = 0
        for name, p in ours.named_parameters():
            q = theirs_params[name]
            if q.grad is None:
                assert p.grad is None or p.grad.abs().max() == 0, name
                continue
            err = ((p.grad - q.grad).abs().max() / max(q.grad.abs().max().item(), floor)).item()
            assert err <= tol, f"grad {name}: {err}"
            n += 1
        assert n > 10


def load_ours(cls, hf_model, tmp_path, dtype):
    hf_model.save_pretrained(tmp_path)
    ours = cls.from_pretrained(tmp_path, dtype=dtype)
    assert not ours.load_report.missing and not ours.load_report.unexpected, ours.load_report
    return ours


def mlm_labels():
    g = torch.Generator().manual_seed(2)
    labels = torch.full((B, S), -100)
    labels[:, 2] = torch.randint(0, V, (B,), generator=g)
    labels[0, 5] = 7
    return dict(labels=labels, next_sentence_label=torch.tensor([0, 1, 1]))


ATTENTION = [dict(key_query_shared_bottleneck=True), dict(use_bottleneck_attention=True, key_query_shared_bottleneck=False),
             dict(use_bottleneck=False, key_query_shared_bottleneck=False, intra_bottleneck_size=32)]


@pytest.mark.parametrize("attn,ffn,norm,act", list(itertools.product(
    range(len(ATTENTION)), [1, 2, 4], ["no_norm", "layer_norm"], ["relu", "gelu"])))
def test_pretraining_parity_float64(tmp_path, attn, ffn, norm, act):
    cfg = hf_mobilebert_config(num_feedforward_networks=ffn, normalization_type=norm, hidden_act=act, **ATTENTION[attn])
    theirs = hf.MobileBertForPreTraining(cfg).double()
    perturb(theirs)
    ours = load_ours(mb.MobileBertForPreTraining, theirs, tmp_path, torch.float64)
    compare(ours, theirs, inputs(), torch.float64, mlm_labels())


@pytest.mark.parametrize("pooler", [True, False])
def test_pretraining_parity_float32(tmp_path, pooler):
    theirs = hf.MobileBertForPreTraining(hf_mobilebert_config(classifier_activation=pooler))
    perturb(theirs)
    ours = load_ours(mb.MobileBertForPreTraining, theirs, tmp_path, None)
    compare(ours, theirs, inputs(), torch.float32, mlm_labels())


def _head_cases():
    g = torch.Generator().manual_seed(3)
    return [
        ("MobileBertForMaskedLM", {}, None, lambda: {"labels": mlm_labels()["labels"]}),
        ("MobileBertForNextSentencePrediction", {}, None, lambda: {"labels": torch.tensor([0, 1, 0])}),
        ("MobileBertForSequenceClassification", {"num_labels": 3}, None, lambda: {"labels": torch.tensor([0, 2, 1])}),
        ("MobileBertForSequenceClassification", {"num_labels": 1}, None, lambda: {"labels": torch.randn(B, generator=g)}),
        ("MobileBertForSequenceClassification", {"num_labels": 4, "problem_type": "multi_label_classification"}, None,
         lambda: {"labels": (torch.rand(B, 4, generator=g) > 0.5).double()}),
        ("MobileBertForQuestionAnswering", {}, None,
         lambda: {"start_positions": torch.tensor([1, 3, 40]), "end_positions": torch.tensor([2, 5, 41])}),
        ("MobileBertForTokenClassification", {"num_labels": 5}, None,
         lambda: {"labels": torch.randint(0, 5, (B, S), generator=g).masked_fill(inputs()["attention_mask"] == 0, -100)}),
        ("MobileBertForMultipleChoice", {}, 2, lambda: {"labels": torch.tensor([1, 0, 1])}),
    ]


@pytest.mark.parametrize("case", range(len(_head_cases())))
def test_head_parity_float64(tmp_path, case):
    name, extra, choices, labels = _head_cases()[case]
    theirs = getattr(hf, name)(hf_mobilebert_config(**extra)).double()
    perturb(theirs)
    ours = load_ours(getattr(mb, name), theirs, tmp_path, torch.float64)
    compare(ours, theirs, inputs(choices), torch.float64, labels())


@pytest.mark.parametrize("name", ["BertForPreTraining", "BertForSequenceClassification", "BertForQuestionAnswering",
                                  "BertForMaskedLM", "BertModel"])
def test_bert_parity_float64(tmp_path, name):
    cfg = hf.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        max_position_embeddings=64, attn_implementation="eager")
    theirs = getattr(hf, name)(cfg).double()
    perturb(theirs)
    ours = load_ours(getattr(mb, name.replace("Bert", "MobileBert")), theirs, tmp_path, torch.float64)
    assert ours.config.model_type == "bert"
    labels = {"BertForPreTraining": mlm_labels(), "BertForMaskedLM": {"labels": mlm_labels()["labels"]},
              "BertForSequenceClassification": {"labels": torch.tensor([0, 1, 1])},
              "BertForQuestionAnswering": {"start_positions": torch.tensor([1, 2, 3]),
                                           "end_positions": torch.tensor([2, 4, 3])}}.get(name)
    compare(ours, theirs, inputs(), torch.float64, labels)


@pytest.mark.parametrize("preset", ["debug-mobilebert", "debug-bert"])
def test_round_trip_ours_hf_ours(tmp_path, preset):
    """Ours -> HF files -> transformers -> HF files -> ours is exact, and outputs agree on the way."""
    ours = mb.MobileBertForPreTraining(mb.get_config(preset, vocab_size=V))
    perturb(ours)
    ours.save_pretrained(tmp_path / "a")
    auto = hf.AutoModelForPreTraining.from_pretrained(tmp_path / "a", attn_implementation="eager")
    assert type(auto).__name__ == ("BertForPreTraining" if preset == "debug-bert" else "MobileBertForPreTraining")
    compare(ours, auto, inputs(), torch.float32)
    auto.save_pretrained(tmp_path / "b")
    back = mb.MobileBertForPreTraining.from_pretrained(tmp_path / "b")
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert back.config == ours.config.replace(architectures=back.config.architectures)


def test_saved_keys_are_transformers_keys(tmp_path):
    ours = mb.MobileBertForPreTraining(mb.get_config("debug-mobilebert", vocab_size=V))
    ours.save_pretrained(tmp_path)
    theirs = hf.MobileBertForPreTraining(hf.MobileBertConfig.from_pretrained(tmp_path))
    hf_keys = {k for k in theirs.state_dict() if not k.startswith("cls.predictions.decoder")}
    assert set(read_state_dict(tmp_path)) == hf_keys
