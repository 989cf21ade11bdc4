"""`mobilebert export`, `quantize` and `bench` from the command line: success output and clear failures (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mobilebert import get_config
from mobilebert.cli import main
from mobilebert.heads import MobileBertForQuestionAnswering, MobileBertForSequenceClassification

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, vocab_file):
    """A small saved classifier with its vocabulary beside it (as `mobilebert finetune` saves one)."""
    folder = tmp_path_factory.mktemp("ckpt")
    MobileBertForSequenceClassification(get_config("debug-mobilebert")).save_pretrained(folder)
    shutil.copyfile(vocab_file, folder / "vocab.txt")
    return folder


def test_export_onnx_prints_differences_and_writes(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "onnx", str(checkpoint), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max abs diff" in text and "max rel diff" in text and "argmax agreement 100.0%" in text
    assert out.is_file()
    from mobilebert.export.runtime import load_session

    assert load_session(out).tokenizer is not None  # the checkpoint's vocabulary was embedded


def test_export_onnx_fuse_then_predict(checkpoint, tmp_path, capsys):
    """`--fuse` writes the fused graph, checked against the unfused checkpoint; `predict` runs it."""
    import onnx

    out = tmp_path / "fused.onnx"
    assert main(["export", "onnx", str(checkpoint), "--out", str(out), "--fuse"]) == 0
    assert "argmax agreement 100.0%" in capsys.readouterr().out
    nodes = onnx.load(str(out)).graph.node
    assert not [n.name for n in nodes if n.op_type == "Mul" and any("LayerNorm" in i for i in n.input)]
    assert [n.input[1] for n in nodes if n.op_type == "Mul" and "out_scale" in n.input[1]] == [
        "model.mobilebert.encoder.layer.3.out_scale"]  # the carried affine, applied once after the last layer
    assert main(["predict", str(out), "a gripping, beautifully made film"]) == 0
    label, prob = capsys.readouterr().out.strip().split("\t")  # predicted label, its probability
    assert label in ("0", "1") and 0.5 <= float(prob) <= 1.0


def test_export_other_head_by_task(tmp_path, capsys):
    folder = tmp_path / "qa"
    MobileBertForQuestionAnswering(get_config("debug-mobilebert")).save_pretrained(folder)
    out = tmp_path / "base.onnx"
    assert main(["export", "onnx", str(folder), "--task", "MobileBertModel", "--out", str(out), "--opset", "14"]) == 0
    assert "last_hidden_state" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "not_a_model", "opset", "bad_suffix", "bad_task"])
def test_export_errors_exit_2_and_leave_nothing(case, checkpoint, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.onnx"
    model, extra, expect = str(checkpoint), [], ""
    if case == "missing":
        model, expect = str(tmp_path / "nope"), "no such model folder"
    elif case == "not_a_model":
        junk = tmp_path / "junk"
        junk.mkdir()
        (junk / "weights.bin").write_bytes(b"\x00" * 10)
        model, expect = str(junk), "config.json"
    elif case == "opset":
        extra, expect = ["--opset", "7"], "--opset 7: unsupported"
    elif case == "bad_suffix":
        out, expect = out_dir / "m.bin", "must end in .onnx"
    elif case == "bad_task":
        extra, expect = ["--task", "MobileBertForTranslation"], "MobileBertForTranslation"
    assert main(["export", "onnx", model, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobilebert export: error:") and expect in err and err.count("\n") == 1
    assert not any(out_dir.iterdir())


@pytest.mark.parametrize("method, options, expect", [
    ("torch-dynamic", ["--fuse"], "ort-dynamic or ort-static"),
    ("torch-dynamic", ["--reduce-range"], "ort-dynamic or ort-static"),
    ("ort-static", ["--weight-type", "u8"], "only --method ort-dynamic takes uint8 weights")])
def test_quantize_options_of_another_method_exit_2(checkpoint, data_dir, tmp_path, capsys, method, options, expect):
    out = tmp_path / "q.onnx"
    args = ["quantize", str(checkpoint), "--task", "sst-2", "--data", str(data_dir / "glue"), "--method", method,
            "--out", str(out), *options]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert options[0] in err and expect in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_quantize_wrong_task_exits_2(checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    code = main(["quantize", str(checkpoint), "--task", "MNLI", "--data", str(data_dir / "glue"), "--out", str(out)])
    assert code == 2
    assert "the task has 3 labels but the model's classifier has 2" in capsys.readouterr().err
    assert not out.exists()


def test_quantize_reports_side_by_side(checkpoint, data_dir, tmp_path, capsys):
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    # A random-init model scores near chance, so allow any drop: this checks the report, not accuracy.
    assert main(["quantize", str(checkpoint), "--task", "SST-2", "--data", str(data_dir / "glue"), "--out", str(out),
                 "--eval-samples", "64", "--max-drop", "100", "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "| fp32 |" in text and "| ort-dynamic |" in text and "argmax agreement" in text
    r = json.loads(report.read_text())
    assert r["examples"] == 64 and out.is_file() and 0 <= r["agreement"] <= 1
    assert "mean output difference" in text and 0 <= r["mean_abs_diff"] <= r["largest_fp32"]


def test_bench_writes_table_chart_and_json(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--models", "debug-mobilebert,debug-bert", "--runtimes", "torch-eager,ort-fp32,ort-int8",
                 "--seqs", "8", "--threads", "1", "--runs", "3", "--warmup", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| ort-int8 | 8 | 1 |" in text and "debug-bert / debug-mobilebert" in text and "Size on disk" in text
    d = json.loads((out / "results.json").read_text())
    assert len(d["results"]) == 6 and d["sizes"]["debug-mobilebert"]["onnx int8"] > 0
    assert (out / "latency.png").stat().st_size > 1000 and (out / "table.md").is_file()


def test_bench_bad_options_exit_2(tmp_path, capsys):
    assert main(["bench", "--models", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["bench", "--models", "debug-mobilebert", "--runtimes", "tflite", "--seqs", "8", "--threads", "1",
                 "--out", str(tmp_path)]) == 2
    assert "unknown runtime 'tflite'" in capsys.readouterr().err


def test_bench_default_runtimes_skip_executorch_when_missing(monkeypatch, capsys):
    import sys

    from mobilebert.recipes.bench import RUNTIMES, default_runtimes

    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch -> ImportError
    assert default_runtimes() == tuple(r for r in RUNTIMES if not r.startswith("executorch"))
    assert "executorch is not installed" in capsys.readouterr().out


@pytest.mark.slow
def test_export_executorch_cli(tmp_path, vocab_file, capsys):
    pytest.importorskip("executorch")
    folder = tmp_path / "ckpt"
    MobileBertForSequenceClassification(get_config("debug-mobilebert", num_hidden_layers=1)).save_pretrained(folder)
    out = tmp_path / "m.pte"
    assert main(["export", "executorch", str(folder), "--vocab", str(vocab_file), "--out", str(out),
                 "--max-seq", "64", "--max-batch", "4"]) == 0
    assert "max rel diff" in capsys.readouterr().out and out.is_file()
    assert main(["export", "executorch", str(folder), "--out", str(tmp_path / "x.pte"), "--max-seq", "1000"]) == 2
    assert "--max-seq 1000" in capsys.readouterr().err and not (tmp_path / "x.pte").exists()
    # no --max-seq: 128, or the model's positions where fewer (the 64-position fixture)
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "pre_restructure" / "finetune-sst2" / "best"
    assert main(["export", "executorch", str(fixture), "--out", str(tmp_path / "f.pte")]) == 0
    assert json.loads((tmp_path / "f.pte.json").read_text())["mobilebert.max_seq"] == 64


def test_quantize_sequence_length_follows_the_model(data_dir, tmp_path, capsys):
    """A model with 64 positions: by default quantize scores at 64 tokens (not 128, which its position table cannot
    hold); an explicit longer --max-seq-length is one line naming the option, before anything is written. (`export
    executorch --max-seq` follows the model the same way: test_export_executorch_cli.)"""
    model = Path(__file__).resolve().parents[1] / "fixtures" / "pre_restructure" / "finetune-sst2" / "best"
    out = tmp_path / "q.onnx"
    args = ["quantize", str(model), "--task", "sst-2", "--data", str(data_dir / "glue"), "--out", str(out),
            "--eval-samples", "40", "--warn-only"]
    assert main(args) == 0, capsys.readouterr().err
    assert out.is_file()
    out.unlink()
    capsys.readouterr()
    assert main([*args, "--max-seq-length", "128"]) == 2
    err = capsys.readouterr().err
    assert "--max-seq-length 128" in err and "max_position_embeddings=64" in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())
