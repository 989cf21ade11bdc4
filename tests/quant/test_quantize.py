"""int8 post-training quantization on real SST-2 (paper Table 6; tensorflow#44306's 90% -> 49% is the trap).

A debug-size MobileBERT is fine-tuned here on a subsample of SST-2 train with `mobilebert.recipes.finetune`,
then quantized three ways (ONNX Runtime dynamic, ONNX Runtime static QDQ calibrated on SST-2 train,
PyTorch dynamic) and scored against its fp32 self on the full SST-2 dev set (872 sentences):
predicted classes must agree on >= 99% of the examples. The accuracy gate must refuse (and write
nothing) past --max-drop, and data from another task must be refused.
"""

from __future__ import annotations

import json

import pytest

from mobilebert.errors import UserError

pytest.importorskip("onnxruntime")

from mobilebert.quant.evaluate import AccuracyDropError  # noqa: E402
from mobilebert.recipes.quantize import quantize_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def sst2_model(tmp_path_factory, data_dir, vocab_file):
    """debug-mobilebert fine-tuned on 3,000 SST-2 training sentences (about 190 steps)."""
    from mobilebert.recipes.finetune import finetune
    from mobilebert.recipes.finetune_settings import FinetuneSettings

    s = FinetuneSettings()
    s.out = str(tmp_path_factory.mktemp("sst2"))
    s.model.init = "debug-mobilebert"
    s.model.tokenizer = str(vocab_file)
    s.data.task, s.data.dir = "sst-2", str(data_dir / "glue")
    s.data.max_train_examples, s.data.max_seq_length, s.data.predict_test = 3000, 64, False
    s.train.epochs, s.train.batch_size, s.train.progress, s.train.seed = 2.0, 32, False, 0
    s.optim.lr = 3e-3
    results = finetune(s)
    assert results["best"]["accuracy"] > 0.6, results["best"]  # it learned something: argmaxes are not ties
    return s.out + "/best"


def _check(result, min_agreement=0.99, max_drop=1.0):
    r = result.report
    assert r.task == "SST-2" and r.n == 872
    assert r.agreement >= min_agreement, r.table()
    assert r.drop <= max_drop, r.table()


def test_ort_dynamic_int8_agrees_with_fp32(sst2_model, data_dir, tmp_path):
    out = tmp_path / "sst2.int8.onnx"
    result = quantize_checkpoint(sst2_model, "SST-2", data_dir / "glue", out=out, log=lambda *a: None)
    _check(result)
    assert out.is_file() and result.warning is None
    from mobilebert.export.runtime import load_session

    session = load_session(out)
    assert session.head == "MobileBertForSequenceClassification" and session.tokenizer is not None


def test_fused_graph_int8_agrees_with_fp32(sst2_model, data_dir, tmp_path):
    """`--fuse` quantizes the carried (un-normalised) residual streams: still >= 99% agreement on SST-2 dev."""
    out = tmp_path / "sst2.fused.int8.onnx"
    result = quantize_checkpoint(sst2_model, "SST-2", data_dir / "glue", out=out, fuse=True, log=lambda *a: None)
    _check(result)


def test_ort_static_int8_calibrated_on_train(sst2_model, data_dir, tmp_path):
    out = tmp_path / "sst2.static.onnx"
    result = quantize_checkpoint(sst2_model, "SST-2", data_dir / "glue", out=out, method="ort-static",
                                 calib_samples=64, per_channel=True, log=lambda *a: None)
    _check(result)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_torch_dynamic_int8_agrees_with_fp32(sst2_model, data_dir):
    result = quantize_checkpoint(sst2_model, "SST-2", data_dir / "glue", method="torch-dynamic", log=lambda *a: None)
    _check(result)
    assert result.out is None


def test_accuracy_gate_refuses_and_writes_nothing(sst2_model, data_dir, tmp_path):
    out = tmp_path / "refused.onnx"
    # A negative allowance: even a zero drop is "too much", so the gate must fire.
    with pytest.raises(AccuracyDropError, match="more than --max-drop -1"):
        quantize_checkpoint(sst2_model, "SST-2", data_dir / "glue", out=out, max_drop=-1.0, eval_samples=200,
                            log=lambda *a: None)
    assert not any(tmp_path.iterdir())
    result = quantize_checkpoint(sst2_model, "SST-2", data_dir / "glue", out=out, max_drop=-1.0, eval_samples=200,
                                 warn_only=True, log=lambda *a: None)
    assert result.warning and "more than --max-drop" in result.warning and out.is_file()


def test_data_from_another_task_is_refused(sst2_model, data_dir, tmp_path):
    out = tmp_path / "x.onnx"
    with pytest.raises(UserError, match="fine-tuned on SST-2"):
        quantize_checkpoint(sst2_model, "MRPC", data_dir / "glue", out=out, log=lambda *a: None)
    # Calibration file of another task: its columns are not SST-2's.
    with pytest.raises(UserError, match="no column 'sentence'"):
        quantize_checkpoint(sst2_model, "SST-2", data_dir / "glue", out=out, method="ort-static",
                            calibration=data_dir / "glue" / "RTE" / "train.tsv", eval_samples=50, log=lambda *a: None)
    assert not any(tmp_path.iterdir())


def test_label_count_mismatch_is_refused(sst2_model, data_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(sst2_model, copy)
    (copy / "task.json").unlink()
    with pytest.raises(UserError, match="the task has 3 labels but the model's classifier has 2"):
        quantize_checkpoint(copy, "MNLI", data_dir / "glue", out=tmp_path / "x.onnx", log=lambda *a: None)
    assert not (tmp_path / "x.onnx").exists()


def test_quantized_file_is_smaller_with_int8_embeddings(tmp_path):
    from mobilebert import get_config
    from mobilebert.export.onnx import export_onnx
    from mobilebert.heads import MobileBertForSequenceClassification
    from mobilebert.quant.ort import quantize_onnx_dynamic, weight_matmuls

    model = MobileBertForSequenceClassification(get_config("debug-mobilebert")).eval()
    fp32 = tmp_path / "m.onnx"
    export_onnx(model, fp32)
    weights, acts = weight_matmuls(fp32)
    assert weights and acts  # attention matmuls are found and left in float
    int8 = quantize_onnx_dynamic(fp32, tmp_path / "m.int8.onnx", embeddings=True)
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    meta = {p.key: p.value for p in __import__("onnx").load(str(int8)).metadata_props}
    assert meta["mobilebert.quantized"] == "int8" and json.loads(meta["mobilebert.config"])["hidden_size"] == 64
