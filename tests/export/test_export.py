"""ONNX / ExecuTorch export parity for every head (paper §5; optimum#1027's max diff 34 is the trap).

Each head is exported with dynamic axes, then run on a real SST-2 dev sample at a shape different
from the trace shape: fp32 must agree with PyTorch within 1e-4 relative (max|a-b| / max|b|) and on
every argmax. Bad input (missing path, not a model, unsupported opset, failed parity, too long a
sequence at inference) must be a UserError and leave no file behind.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilebert import get_config
from mobilebert.errors import UserError
from mobilebert.heads import HEADS
from mobilebert.tokenizer import Tokenizer

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mobilebert.export import onnx as export_onnx_mod  # noqa: E402
from mobilebert.export.onnx import ParityError, compare_outputs, export_onnx, sample_inputs  # noqa: E402
from mobilebert.export.runtime import load_session  # noqa: E402
from mobilebert.export.wrapper import HEAD_NAMES, output_names, reference_outputs  # noqa: E402

RTOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return Tokenizer.from_file(vocab_file)


@pytest.fixture(scope="module")
def dev_sample(data_dir, tokenizer):
    """16 real SST-2 dev sentences, padded (so the attention mask has padding)."""
    lines = (data_dir / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:17]
    enc = tokenizer([line.split("\t")[0] for line in lines], max_length=64)
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def _perturbed(model):
    """Non-trivial NoNorm/LayerNorm affines, so that a mistake in any of them would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _shape_for(head, ids, mask, types):
    if head == "MobileBertForMultipleChoice":
        return tuple(t.reshape(-1, 2, t.shape[-1]) for t in (ids, mask, types))
    return ids, mask, types


def _check_dev_parity(path, model, head, dev_sample):
    session = load_session(path)
    ids, mask, types = _shape_for(head, *dev_sample)
    want = [t.numpy() for t in reference_outputs(model, ids, mask, types)]
    got = session(ids.numpy(), mask.numpy(), types.numpy())
    names = output_names(model)
    assert set(names) <= set(got)
    report = compare_outputs(names, [got[n] for n in names], want, RTOL)
    for d in report.diffs:
        assert d.max_rel <= RTOL, str(d)
    for name, w in zip(names, want):  # identical argmax wherever the output is a score over classes/positions
        if w.ndim >= 2 and w.shape[-1] > 1:
            np.testing.assert_array_equal(got[name].argmax(-1), w.argmax(-1), err_msg=name)
    return report


@pytest.mark.parametrize("head", list(HEAD_NAMES))
def test_every_head_exports_with_parity(head, tmp_path, tokenizer, dev_sample):
    labels = 2 if head == "MobileBertForQuestionAnswering" else 3  # QA: start and end
    model = _perturbed(HEADS[head](get_config("debug-mobilebert", num_labels=labels)))
    out = tmp_path / f"{head}.onnx"
    report = export_onnx(model, out, tokenizer=tokenizer)
    assert report.ok and out.is_file()
    assert all(d.max_rel <= RTOL for d in report.diffs)
    # A real dev sample at another batch size and sequence length than the trace: dynamic axes work.
    _check_dev_parity(out, model, head, dev_sample)
    assert list(tmp_path.iterdir()) == [out]  # no temporary files left


@pytest.mark.parametrize("preset", ["debug-mobilebert", "debug-bert"])
def test_mean_pooled_classifier_exports_with_parity(preset, tmp_path, tokenizer, dev_sample):
    """classifier_pooling="mean" on padded real sentences: the graph pools over the mask as PyTorch does."""
    head = "MobileBertForSequenceClassification"
    model = _perturbed(HEADS[head](get_config(preset, classifier_pooling="mean")))
    out = tmp_path / "mean.onnx"
    export_onnx(model, out, tokenizer=tokenizer)
    assert int(dev_sample[1].sum()) < dev_sample[1].numel()  # the sample is padded
    _check_dev_parity(out, model, head, dev_sample)


@pytest.mark.parametrize("num_labels,fuse", [(3, False), (1, True)])
def test_siamese_classifier_exports_with_parity(num_labels, fuse, tmp_path, tokenizer, data_dir):
    """classifier_pooling="siamese" takes the pair row and splits it inside the graph: real MRPC dev pairs, longer
    and more than the trace's, padded, match PyTorch (which trims each batch to its longer sentence), plain or
    fused; a regression head (cos(u, v)) as well as classes."""
    head = "MobileBertForSequenceClassification"
    model = _perturbed(HEADS[head](get_config("debug-mobilebert", classifier_pooling="siamese",
                                              num_labels=num_labels)))
    out = tmp_path / "siamese.onnx"
    export_onnx(model, out, tokenizer=tokenizer, fuse=fuse)
    rows = [line.split("\t") for line in
            (data_dir / "glue" / "MRPC" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:10]]
    pairs = tokenizer([r[3] for r in rows], [r[4] for r in rows], max_length=64)
    assert pairs["input_ids"].shape[1] > sample_inputs(model, tokenizer)[0].shape[1]  # longer than the trace
    assert int(pairs["token_type_ids"].sum()) > 0 and int(pairs["attention_mask"].sum()) < pairs["attention_mask"].numel()
    _check_dev_parity(out, model, head, (pairs["input_ids"], pairs["attention_mask"], pairs["token_type_ids"]))
    import onnx

    # the sentence rows are trimmed in the graph, to a length read from the mask (not the trace's)
    assert "NonZero" in {n.op_type for n in onnx.load(str(out)).graph.node}


@pytest.mark.parametrize("head", ["MobileBertForSequenceClassification", "MobileBertForQuestionAnswering"])
def test_bert_layout_exports(head, tmp_path, tokenizer, dev_sample):
    model = _perturbed(HEADS[head](get_config("debug-bert")))
    out = tmp_path / "bert.onnx"
    export_onnx(model, out, tokenizer=tokenizer)
    _check_dev_parity(out, model, head, dev_sample)


def test_folded_nonorm_export_matches_unfolded_model(tmp_path, tokenizer, dev_sample):
    from mobilebert.export.fold import fold_nonorm

    model = _perturbed(HEADS["MobileBertForSequenceClassification"](get_config("debug-mobilebert")))
    folded, n = fold_nonorm(model)
    cfg = model.config
    # embeddings; per layer two bottlenecks (fully) and the residual norms' shifts: attention output,
    # the F-1 stacked FFNs, the FFN output, the output bottleneck
    assert n == 1 + cfg.num_hidden_layers * (2 + 1 + (cfg.num_feedforward_networks - 1) + 2)
    out = tmp_path / "folded.onnx"
    export_onnx(model, out, tokenizer=tokenizer, fold_nonorm=True)
    _check_dev_parity(out, model, "MobileBertForSequenceClassification", dev_sample)


def test_token_major_graph_has_bias_fused_gemms_and_matmul_rewrite_is_exact(tmp_path, tokenizer, dev_sample):
    """The encoder exports on (B*S, H), so every linear is one Gemm with its bias (no separate bias Add);
    the dynamic quantizer's MatMul + Add rewrite of those Gemms computes the same numbers."""
    import onnxruntime as ort

    from mobilebert.quant.ort import gemms_to_matmuls

    model = _perturbed(HEADS["MobileBertForSequenceClassification"](get_config("debug-mobilebert")))
    out = tmp_path / "m.onnx"
    export_onnx(model, out, tokenizer=tokenizer)
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert ops.count("Gemm") >= linears - 3  # all but the embedding projection and the head's
    plain = tmp_path / "plain.onnx"
    assert gemms_to_matmuls(out, plain) == ops.count("Gemm")
    plain_ops = [n.op_type for n in onnx.load(str(plain)).graph.node]
    assert "Gemm" not in plain_ops and plain_ops.count("MatMul") == ops.count("MatMul") + ops.count("Gemm")
    ids, mask, types = dev_sample
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(run(plain), run(out), rtol=1e-5, atol=1e-6)


def test_session_carries_config_and_vocabulary(tmp_path, tokenizer, vocab_file):
    model = HEADS["MobileBertForSequenceClassification"](get_config("debug-mobilebert")).eval()
    out = tmp_path / "m.onnx"
    export_onnx(model, out, tokenizer=tokenizer, vocab_path=vocab_file)
    session = load_session(out)
    assert session.head == "MobileBertForSequenceClassification"
    assert session.config.hidden_size == model.config.hidden_size
    enc = session.tokenizer(["a gorgeous , witty , seductive movie ."])
    logits = session(enc["input_ids"].numpy(), enc["attention_mask"].numpy(), enc["token_type_ids"].numpy())["logits"]
    want = model(**enc).logits.detach().numpy()
    assert np.abs(logits - want).max() <= RTOL * np.abs(want).max()


def test_sequence_longer_than_positions_is_a_clear_error(tmp_path):
    model = HEADS["MobileBertForSequenceClassification"](get_config("debug-mobilebert", max_position_embeddings=32))
    out = tmp_path / "short.onnx"
    export_onnx(model, out)
    session = load_session(out)
    ids = np.ones((1, 33), dtype=np.int64)
    with pytest.raises(UserError, match="longer than the model's max_position_embeddings=32"):
        session(ids, np.ones_like(ids), np.zeros_like(ids))
    with pytest.raises(UserError, match="outside the vocabulary"):
        session(np.full((1, 8), 10**6), None, None)


@pytest.mark.parametrize("opset", [9, 13, 21])
def test_unsupported_opset_is_refused(opset, tmp_path):
    model = HEADS["MobileBertModel"](get_config("debug-mobilebert"))
    with pytest.raises(UserError, match=f"--opset {opset}: unsupported"):
        export_onnx(model, tmp_path / "m.onnx", opset=opset)
    assert not any(tmp_path.iterdir())


def test_parity_failure_leaves_no_file(tmp_path, monkeypatch):
    model = HEADS["MobileBertForSequenceClassification"](get_config("debug-mobilebert")).eval()
    real = reference_outputs
    monkeypatch.setattr(export_onnx_mod, "reference_outputs", lambda *a: tuple(t + 1.0 for t in real(*a)))
    out = tmp_path / "bad.onnx"
    with pytest.raises(ParityError, match="disagrees with PyTorch"):
        export_onnx(model, out)
    assert not any(tmp_path.iterdir())


def test_bad_model_paths(tmp_path):
    from mobilebert.export.onnx import load_for_export

    with pytest.raises(UserError, match="no such model folder"):
        load_for_export(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UserError, match="config.json"):
        load_for_export(tmp_path)
    with pytest.raises(UserError, match="config.json"):
        load_for_export(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="not a readable ONNX file"):
        load_session(_garbage(tmp_path))
    with pytest.raises(UserError, match="unknown exported model format"):
        load_session(tmp_path / "notes.txt")


def _garbage(tmp_path):
    p = tmp_path / "garbage.onnx"
    p.write_bytes(b"\x00\x01not onnx at all")
    return p


def test_executorch_program_matches_pytorch(tmp_path, tokenizer, dev_sample):
    pytest.importorskip("executorch")
    from mobilebert.export.mobile import export_executorch

    model = _perturbed(HEADS["MobileBertForSequenceClassification"](get_config("debug-mobilebert", num_hidden_layers=1)))
    out = tmp_path / "m.pte"
    report = export_executorch(model, out, max_seq=64, tokenizer=tokenizer)
    assert report.ok and out.is_file() and (tmp_path / "m.pte.json").is_file()
    _check_dev_parity(out, model, "MobileBertForSequenceClassification", dev_sample)
    session = load_session(out)
    with pytest.raises(UserError, match="longer than the 64"):
        session(np.ones((1, 65), dtype=np.int64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pte", "m.pte.json"]


@pytest.mark.parametrize("fuse, int8", [(False, False), (True, False), (True, True)])
def test_executorch_siamese_classifier_matches_pytorch(fuse, int8, tmp_path, tokenizer, data_dir):
    """A bi-encoder classifier lowers to ExecuTorch as to ONNX (the graph splits the pair row itself): real MRPC dev
    pairs, plain and fused fp32 to the parity tolerance, and dynamic int8 (pt2e), whose quantizer once turned the
    row split's integer constants into float ones, on every argmax."""
    pytest.importorskip("executorch")
    from mobilebert.export.mobile import export_executorch

    model = _perturbed(HEADS["MobileBertForSequenceClassification"](
        get_config("debug-mobilebert", classifier_pooling="siamese", num_hidden_layers=2)))
    out = tmp_path / "siamese.pte"
    report = export_executorch(model, out, max_seq=64, tokenizer=tokenizer, fuse=fuse, int8=int8)
    assert report.ok and out.is_file()
    rows = [line.split("\t") for line in
            (data_dir / "glue" / "MRPC" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:10]]
    pairs = tokenizer([r[3] for r in rows], [r[4] for r in rows], max_length=64)
    inputs = (pairs["input_ids"], pairs["attention_mask"], pairs["token_type_ids"])
    if not int8:
        _check_dev_parity(out, model, "MobileBertForSequenceClassification", inputs)
        return
    got = load_session(out)(*(t.numpy() for t in inputs))["logits"]
    (want,) = [t.numpy() for t in reference_outputs(model, *inputs)]
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()


@pytest.mark.parametrize("int8", [False, True])
def test_executorch_fused_program_matches_pytorch(int8, tmp_path, tokenizer, dev_sample):
    """The fused layers (residual steps as linear + add) lower to XNNPACK, fp32 and dynamic int8."""
    pytest.importorskip("executorch")
    from mobilebert.export.mobile import export_executorch

    model = _perturbed(HEADS["MobileBertForSequenceClassification"](get_config("debug-mobilebert", num_hidden_layers=2)))
    out = tmp_path / "m.pte"
    report = export_executorch(model, out, max_seq=64, tokenizer=tokenizer, fuse=True, int8=int8)
    assert report.ok and out.is_file()
    if not int8:
        _check_dev_parity(out, model, "MobileBertForSequenceClassification", dev_sample)
