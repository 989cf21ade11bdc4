"""The fused inference graph (mobilebert.export.fuse): same function as the trained model, fewer ops.

Every layer layout (MobileBERT, MobileBERT_TINY's bottleneck attention, the IB-BERT teacher, BERT) with
perturbed norm affines is compared with the original model's own forward on real SST-2 dev sentences with
padding; the ONNX export of the fused graph passes the export's parity check, drops the residual adds and
NoNorm multiplies, and keeps >= 99% argmax agreement when quantized to int8. A NoNorm with a zero gain
(cannot be divided out) and gains whose product leaves f32 headroom take the fallbacks and still match.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilebert import get_config
from mobilebert.export.fuse import SCALE_RANGE, FusedLayer, fuse_for_inference
from mobilebert.export.wrapper import ExportWrapper, reference_outputs
from mobilebert.heads import HEADS
from mobilebert.tokenizer import Tokenizer

LAYOUTS = {
    "mobilebert": dict(preset="debug-mobilebert"),
    "mobilebert-tiny": dict(preset="debug-mobilebert", use_bottleneck_attention=True,
                            key_query_shared_bottleneck=False),
    "mobilebert-relu6": dict(preset="debug-mobilebert", hidden_act="relu6"),
    "ibbert-teacher": dict(preset="debug-ibbert"),
    "bert": dict(preset="debug-bert"),
}


@pytest.fixture(scope="module")
def dev_sample(data_dir, vocab_file):
    lines = (data_dir / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:13]
    enc = Tokenizer.from_file(vocab_file)([line.split("\t")[0] for line in lines], max_length=48)
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def _model(layout: str, head: str = "MobileBertForSequenceClassification", seed: int = 0):
    kw = dict(LAYOUTS[layout])
    torch.manual_seed(seed)
    model = HEADS[head](get_config(kw.pop("preset"), num_labels=2 if "Question" in head else 3, **kw))
    with torch.no_grad():  # non-trivial affines, so that a mistake in carrying any of them shows
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def _max_rel(got, want) -> float:
    return max(float((g - w).abs().max() / w.abs().max()) for g, w in zip(got, want))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("head", ["MobileBertForSequenceClassification", "MobileBertForQuestionAnswering"])
def test_fused_model_computes_the_trained_function(layout, head, dev_sample):
    model = _model(layout, head)
    fused = fuse_for_inference(model)
    assert all(isinstance(layer, FusedLayer) for layer in fused.base_model.encoder.layer)
    want = reference_outputs(model, *dev_sample)
    with torch.no_grad():
        got = ExportWrapper(fused, token_major=True)(*dev_sample)
        got_3d = ExportWrapper(fused)(*dev_sample)  # (B, S, H) input: the layers flatten it themselves
    assert _max_rel(got, want) < 2e-5 and _max_rel(got_3d, want) < 2e-5
    # the original is untouched
    assert _max_rel(reference_outputs(model, *dev_sample), want) == 0.0


def test_nonorm_streams_are_carried_and_applied_once():
    fused = fuse_for_inference(_model("mobilebert"))
    layers = list(fused.base_model.encoder.layer)
    assert [layer.apply_affine for layer in layers] == [False] * (len(layers) - 1) + [True]
    for layer in layers:
        assert layer.attn_out.norm is None and all(out.norm is None for out in layer.ffn_out)
        # bottleneck input + attention bottleneck + value in one Gemm; query + key in the second
        assert layer.first.sizes == [32, 32, 32] and layer.second.sizes == [32, 32]
    bert = fuse_for_inference(_model("bert")).base_model.encoder.layer[0]
    assert bert.first.sizes == [64, 64, 64] and bert.second is None and bert.attn_out.norm is not None


def test_zero_gain_disables_carrying_and_still_matches(dev_sample):
    model = _model("mobilebert")
    with torch.no_grad():
        model.base_model.encoder.layer[1].ffn[0].output.LayerNorm.weight[3] = 0.0
    fused = fuse_for_inference(model)
    assert all(layer.attn_out.norm is not None for layer in fused.base_model.encoder.layer)
    with torch.no_grad():
        got = ExportWrapper(fused, token_major=True)(*dev_sample)
    assert _max_rel(got, reference_outputs(model, *dev_sample)) < 2e-5


def test_scale_leaving_f32_headroom_is_applied_mid_stack(dev_sample):
    model = _model("mobilebert")
    with torch.no_grad():  # gains of 2e4 and 1/2e4 on the 64-d stream: the carried product leaves 1e-8..1e8
        for i, layer in enumerate(model.base_model.encoder.layer):
            ob = layer.output.bottleneck
            ob.LayerNorm.weight.mul_(2e4 if i % 4 < 2 else 1 / 2e4)
            ob.dense.weight.mul_(1 / 2e4 if i % 4 < 2 else 2e4)  # keep activations of the same size
    fused = fuse_for_inference(model)
    flags = [layer.apply_affine for layer in fused.base_model.encoder.layer]
    assert flags[1] and flags[-1], flags  # 2e4 * 2e4 = 4e8 > SCALE_RANGE[1]
    assert 4e8 > SCALE_RANGE[1]
    with torch.no_grad():
        got = ExportWrapper(fused, token_major=True)(*dev_sample)
    assert _max_rel(got, reference_outputs(model, *dev_sample)) < 2e-5


def test_fused_onnx_export_has_parity_and_fewer_ops(tmp_path, dev_sample):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mobilebert.export.onnx import export_onnx
    from mobilebert.export.runtime import load_session

    model = _model("mobilebert")
    plain, fused = tmp_path / "plain.onnx", tmp_path / "fused.onnx"
    export_onnx(model, plain, fold_nonorm=True)
    report = export_onnx(model, fused, fuse=True)
    assert report.ok
    got = load_session(fused)(*(t.numpy() for t in dev_sample))["logits"]
    want = reference_outputs(model, *dev_sample)[0].numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    count = lambda p, op: [n.op_type for n in onnx.load(str(p)).graph.node].count(op)
    cfg = model.config
    residual_norms = cfg.num_hidden_layers * (cfg.num_feedforward_networks + 2)  # attention, FFNs, bottleneck
    assert count(plain, "Mul") - count(fused, "Mul") >= residual_norms - 1  # one multiply-add after the stack
    assert count(plain, "Add") - count(fused, "Add") >= residual_norms - 1
    assert count(plain, "Gemm") - count(fused, "Gemm") == 3 * cfg.num_hidden_layers  # 5 input Gemms -> 2


def test_fused_int8_agrees_with_fp32(tmp_path, dev_sample):
    pytest.importorskip("onnxruntime")
    from mobilebert.export.onnx import export_onnx
    from mobilebert.export.runtime import load_session
    from mobilebert.quant.ort import quantize_onnx_dynamic

    model = _model("mobilebert")
    fp32, int8 = tmp_path / "fused.onnx", tmp_path / "fused.int8.onnx"
    export_onnx(model, fp32, fuse=True)
    quantize_onnx_dynamic(fp32, int8, per_channel=True)
    inputs = [t.numpy() for t in dev_sample]
    a, b = load_session(fp32)(*inputs)["logits"], load_session(int8)(*inputs)["logits"]
    assert np.abs(a - b).max() / np.abs(a).max() < 0.1


def test_residual_gemms_rewrite_for_static_int8_is_exact(tmp_path, dev_sample):
    """Static QDQ needs the residual Gemms (C = an activation) as MatMul + Add; the bias Gemms stay."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mobilebert.export.onnx import export_onnx
    from mobilebert.quant.ort import gemms_to_matmuls

    model = _model("mobilebert")
    fused, plain = tmp_path / "fused.onnx", tmp_path / "plain.onnx"
    export_onnx(model, fused, fuse=True)
    cfg = model.config
    assert gemms_to_matmuls(fused, plain, residual_only=True) == cfg.num_hidden_layers * (
        cfg.num_feedforward_networks + 2)  # attention output, each FFN output, output bottleneck
    ops = lambda p: [n.op_type for n in onnx.load(str(p)).graph.node]
    assert ops(fused).count("Gemm") - ops(plain).count("Gemm") == cfg.num_hidden_layers * (
        cfg.num_feedforward_networks + 2)
    feeds = dict(zip(("input_ids", "attention_mask", "token_type_ids"), (t.numpy() for t in dev_sample)))
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(run(plain), run(fused), rtol=1e-5, atol=1e-6)

