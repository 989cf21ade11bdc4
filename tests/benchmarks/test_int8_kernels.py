"""benchmarks/int8_kernels.py: the smoke run quantizes the tiny SST-2 fixture three ways (u8 x s8, 7-bit, u8 x u8),
scores each against fp32 and times them in one interleaved run; a bad --model stops in one line."""

import json
import subprocess
import sys
from pathlib import Path

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
    for task, expect in (("NOPE", "NOPE"), ("STS-B", "regression task")):
        proc = run("--model", f"{REPO / 'tests' / 'fixtures' / 'pre_restructure' / 'finetune-sst2' / 'best'}:{task}",
                   "--out", tmp_path / "out")
        assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())
