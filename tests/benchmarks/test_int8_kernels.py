"""benchmarks/int8_kernels.py: the smoke run quantizes the tiny SST-2 fixture three ways (u8 x s8, 7-bit, u8 x u8),
scores each against fp32 and times them in one interleaved run; a bad --model stops in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "int8_kernels.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_smoke_scores_and_times_three_weight_encodings(tmp_path, data_dir):
    proc = run("--smoke", "--glue", data_dir / "glue", "--out", tmp_path / "k")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "k.json").read_text())
    (model,) = res["models"]
    assert model["task"] == "SST-2" and model["examples"] == 64 and model["shape"].endswith("NoNorm")
    rows = {r["variant"]: r for r in model["rows"]}
    assert [r["options"] for r in model["rows"]] == [{}, {"reduce_range": True}, {"weight_type": "u8"}]
    for r in rows.values():
        assert r["fp32"] == model["rows"][0]["fp32"] and 0 < r["agreement"] <= 100
        assert 0 <= r["mean_abs_err"] <= r["max_abs_err"] and r["p50_ms"] > 0
        assert r["speed_vs_default"] == model["rows"][0]["p50_ms"] / r["p50_ms"]
    assert "| u8 x u8 (--weight-type u8) |" in (tmp_path / "k.md").read_text()


def test_bad_model_is_one_line(tmp_path):
    proc = run("--model", tmp_path / "nope", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "--model" in proc.stderr and "DIR:TASK" in proc.stderr
    assert not any(tmp_path.iterdir())
    fixture = REPO / "tests" / "fixtures" / "pre_restructure" / "finetune-sst2" / "best"
    for task, expect in (("NOPE", "NOPE"), ("STS-B", "regression task")):
        proc = run("--model", f"{fixture}:{task}", "--out", tmp_path / "out")
        assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    for specs, expect in ((["pkt=" + str(tmp_path / "nope") + ":SST-2"], "[LABEL=]DIR:TASK"),
                          ([f"pkt={fixture}:SST-2", f"pkt={fixture}:MRPC"], "already given to a SST-2 model")):
        proc = run(*(a for spec in specs for a in ("--model", spec)), "--out", tmp_path / "out")
        assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())


def test_models_of_one_label_are_summarized_with_sample_std():
    """Two seeds of one model: each column's mean and sample std (ddof=1) per weight encoding; a lone label and an
    unlabelled model get no summary row."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from int8_kernels import VARIANTS, summarize

    def model(label, fp32, int8, p50):
        rows = [{"variant": v, "metric": "accuracy", "fp32": fp32, "int8": int8 - i, "drop": fp32 - int8 + i,
                 "agreement": 99.0 + i, "rel_mean_err": 0.01 * (i + 1), "p50_ms": p50 + i} for i, (v, _) in
                enumerate(VARIANTS)]
        return {"label": label, "task": "SST-2", "rows": rows}

    out = summarize([model("pkt", 80.0, 79.0, 9.0), model("pkt", 82.0, 82.0, 11.0), model("solo", 70.0, 70.0, 5.0),
                     model(None, 60.0, 60.0, 5.0)])
    assert [(s["label"], s["variant"], s["n"]) for s in out] == [("pkt", v, 2) for v, _ in VARIANTS]
    first = out[0]
    assert first["fp32"] == pytest.approx((81.0, 2 ** 0.5)) and first["int8"] == pytest.approx((80.5, 1.5 * 2 ** 0.5))
    assert first["drop"] == pytest.approx((0.5, 0.5 * 2 ** 0.5)) and first["p50_ms"] == pytest.approx((10.0, 2 ** 0.5))
    assert out[2]["int8"][0] == 78.5 and out[2]["agreement"] == (101.0, 0.0)
