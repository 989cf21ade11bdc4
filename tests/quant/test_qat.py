"""Quantization-aware training at the official fake-quant points (paper §5; official QAT needs relu6 + NoNorm)."""

from __future__ import annotations

import copy

import pytest
import torch

from mobilebert import get_config
from mobilebert.errors import ConfigError
from mobilebert.heads import MobileBertForSequenceClassification
from mobilebert.quant.qat import (ActFakeQuant, QatLinear, QatNoNorm, QatSelfAttention, calibrate_qat, prepare_qat,
                                  strip_qat)


def _model(**kw):
    cfg = get_config("debug-mobilebert", hidden_act="relu6", **kw)
    return MobileBertForSequenceClassification(cfg).eval()


def _batch(n=8, s=24):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(999, 30522, (n, s), generator=g)
    mask = torch.ones_like(ids)
    mask[n // 2:, s - 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("changes", [{"hidden_act": "relu"}, {"normalization_type": "layer_norm"}])
def test_qat_needs_relu6_and_nonorm(changes):
    cfg = get_config("debug-mobilebert", **{"hidden_act": "relu6", **changes})
    with pytest.raises(ConfigError, match="qat: needs hidden_act='relu6' and normalization_type='no_norm'"):
        prepare_qat(MobileBertForSequenceClassification(cfg))


def test_fake_quant_points_and_names():
    model = _model()
    keys = list(model.state_dict())
    prepare_qat(model)
    assert list(model.state_dict()) == keys  # ranges are not persisted: checkpoints stay HF-compatible
    layer = model.mobilebert.encoder.layer[0]
    assert isinstance(layer.bottleneck.input.dense, QatLinear)
    assert isinstance(layer.attention.self, QatSelfAttention)
    assert isinstance(layer.ffn[0].output.LayerNorm, QatNoNorm)
    assert isinstance(model.classifier, QatLinear)
    fq = layer.bottleneck.input.dense.act_fq
    assert (fq.lo.item(), fq.hi.item()) == (-6.0, 6.0) and fq.decay == 0.999
    assert (layer.attention.self.score_fq.lo.item(), layer.attention.self.score_fq.hi.item()) == (-6.0, 60.0)


def test_fake_quant_output_approximates_fp32():
    model = _model()
    batch = _batch()
    with torch.no_grad():
        ref = model(**batch).logits
        qat = calibrate_qat(prepare_qat(copy.deepcopy(model)), [batch])
        out = qat(**batch).logits
    rel = (out - ref).abs().max() / ref.abs().max()
    assert 0 < rel < 0.1, rel  # quantized (not identical) yet close
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75


def test_qat_trains_with_finite_loss_and_moves_ranges():
    model = prepare_qat(_model())
    model.train()
    batch = _batch()
    labels = torch.tensor([0, 1] * 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.classifier.weight.detach().clone()
    fq = model.mobilebert.encoder.layer[0].bottleneck.input.dense.act_fq
    lo0 = fq.lo.item()
    losses = []
    for _ in range(4):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, model.classifier.weight)  # straight-through gradients reach the weights
    assert fq.lo.item() != lo0  # the moving-average range follows the data in training


def test_weight_fake_quant_is_symmetric_narrow_range():
    from mobilebert.quant.qat import weight_fake_quant

    w = torch.linspace(-1.0, 0.5, 1001)
    q = weight_fake_quant(w)
    levels = torch.unique(torch.round(q / (1.0 / 127)))
    assert levels.min() >= -127 and levels.max() <= 127 and q.abs().max() == 1.0


def test_activation_fake_quant_has_256_levels_and_exact_zero():
    fq = ActFakeQuant((-2.0, 6.0)).eval()
    x = torch.linspace(-3, 7, 5000)
    y = fq(x)
    assert torch.unique(y).numel() <= 256
    assert fq(torch.zeros(1)).item() == 0.0
    step = 8.0 / 255  # the range is nudged so that zero is exact (as TF does): at most one step
    assert y.min() >= -2.0 - step and y.max() <= 6.0 + step  # clipped to the range


def test_strip_qat_gives_back_the_float_model(tmp_path):
    model = _model()
    qat = prepare_qat(copy.deepcopy(model))
    strip_qat(qat)
    assert not any(isinstance(m, (QatLinear, QatNoNorm, QatSelfAttention, ActFakeQuant)) for m in qat.modules())
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(qat(**batch).logits, model(**batch).logits)
    qat.save_pretrained(tmp_path)
    again = MobileBertForSequenceClassification.from_pretrained(tmp_path)
    assert not again.load_report.missing and not again.load_report.unexpected
