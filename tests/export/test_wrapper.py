"""The export wrapper runs each head's own forward pass (paper §5's fixed-signature graph).

Each head writes its outputs once, in `head_outputs`; `ExportWrapper` calls that method after the model's
own embeddings and encoder (always applying the additive mask, no attention maps). So for every head and
every layout (MobileBERT NoNorm, BERT LayerNorm) the wrapper must give exactly the numbers of the head's
forward, padded or not, (B, S, H) or token-major; this runs in float64 so that any other op order shows.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mobilebert import get_config
from mobilebert.errors import UserError
from mobilebert.export.wrapper import HEAD_NAMES, ExportWrapper, output_names, reference_outputs
from mobilebert.heads import HEADS
from mobilebert.model import ModelOutput


def _inputs(head: str, cfg, padded: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, cfg.vocab_size, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 6:] = 0
        mask[3, 4:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    if head == "MobileBertForMultipleChoice":
        return tuple(t.reshape(2, 2, -1) for t in (ids, mask, types))  # (B, C, S)
    return ids, mask, types


def _model(head: str, preset: str, **config):
    torch.manual_seed(0)
    config.setdefault("num_labels", 2 if head == "MobileBertForQuestionAnswering" else 3)
    model = HEADS[head](get_config(preset, vocab_size=600, **config))  # small V: fast in float64
    with torch.no_grad():  # non-trivial norms, so a skipped or reordered one would show
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.double().eval()


@pytest.mark.parametrize("preset", ["debug-mobilebert", "debug-bert"])
@pytest.mark.parametrize("head", HEAD_NAMES)
def test_wrapper_gives_the_heads_own_forward_exactly(head, preset):
    model = _model(head, preset)
    for padded in (True, False):
        x = _inputs(head, model.config, padded)
        want = reference_outputs(model, *x)
        assert len(want) == len(output_names(model)) and all(w is not None for w in want)
        for token_major in (False, True):
            with torch.no_grad():
                got = ExportWrapper(model, token_major=token_major)(*x)
            assert len(got) == len(want)
            for name, a, b in zip(output_names(model), got, want):
                assert a.shape == b.shape, name
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f"{head} {name}")


def test_output_names_are_model_output_fields_for_every_head():
    fields = {f.name for f in dataclasses.fields(ModelOutput)}
    assert set(HEAD_NAMES) == {cls.__name__ for cls in HEADS.values()}
    for head in HEAD_NAMES:
        names = output_names(_model(head, "debug-mobilebert"))
        assert names and set(names) <= fields, head
    no_pooler = HEADS["MobileBertModel"](get_config("debug-mobilebert"), add_pooling_layer=False)
    assert output_names(no_pooler) == ("last_hidden_state",)


def test_pretraining_head_outputs_serve_the_sparse_mlm_path():
    """sparse_mlm scores only the masked rows through the same head method: equal to the dense logits there."""
    model = _model("MobileBertForPreTraining", "debug-mobilebert")
    ids, mask, types = _inputs("MobileBertForPreTraining", model.config, padded=True)
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    with torch.no_grad():
        dense = model(ids, mask, types).prediction_logits
        sparse = model(ids, mask, types, labels=labels, sparse_mlm=True).prediction_logits
    torch.testing.assert_close(sparse, dense[labels != -100], rtol=0, atol=1e-12)


def test_a_module_that_is_not_a_head_is_refused():
    with pytest.raises(UserError, match="cannot export a Linear: supported heads are MobileBertModel"):
        ExportWrapper(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("preset", ["debug-mobilebert", "debug-bert"])
@pytest.mark.parametrize("head", ["MobileBertForSequenceClassification", "MobileBertForMultipleChoice"])
def test_wrapper_pools_the_mean_as_the_model_does(head, preset):
    """classifier_pooling="mean" needs the mask in the pooler: the wrapper passes it, padded or not."""
    model = _model(head, preset, classifier_pooling="mean")
    for padded in (True, False):
        x = _inputs(head, model.config, padded)
        want = reference_outputs(model, *x)
        with torch.no_grad():
            got = ExportWrapper(model, token_major=True)(*x)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("preset,num_labels", [("debug-mobilebert", 3), ("debug-bert", 3), ("debug-mobilebert", 1)])
def test_wrapper_splits_siamese_pairs_as_the_model_does(preset, num_labels):
    """classifier_pooling="siamese": the wrapper takes the pair row and splits it into the two sentence rows itself,
    untrimmed (rows of S tokens, not the longer sentence's length) or trimmed by `trim_rows`: the forward's numbers,
    padded or not, single sentences or pairs. Extra pads change only the order of float64 sums."""
    model = _model("MobileBertForSequenceClassification", preset, classifier_pooling="siamese", num_labels=num_labels)
    for padded in (True, False):
        x = _inputs("MobileBertForSequenceClassification", model.config, padded)
        x[2][0] = 0  # row 0: a single sentence (no segment 1), which pairs with itself
        want = reference_outputs(model, *x)
        for token_major, trim in ((False, False), (True, False), (True, True)):
            with torch.no_grad():
                got = ExportWrapper(model, token_major=token_major, trim_rows=trim)(*x)
            assert got[0].shape == (4, num_labels)
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-10)


def test_trim_rows_keeps_the_longest_rows_columns():
    from mobilebert.export.wrapper import trim_rows

    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    ids = torch.arange(12).view(2, 6) * mask
    got = trim_rows(ids, mask, torch.zeros_like(ids))
    assert [t.shape for t in got] == [(2, 3)] * 3
    assert got[0].tolist() == [[0, 1, 2], [6, 7, 0]] and got[1].tolist() == mask[:, :3].tolist()
