"""benchmarks/kt_latency.py: the smoke run times teacher and students interleaved, writes the JSON and the report
with the goal verdict and the profile table, `--report` re-renders the same report, and bad `--heads` stop in one
line before anything is written."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "kt_latency.py"


def latency(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_smoke_times_every_student_against_the_teacher_and_rerenders(tmp_path):
    out = tmp_path / "kt-latency"
    proc = latency("--smoke", "--heads", "2", "--out", out, "--workdir", tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["heads"] == {"teacher": 4, "student": 4, "student-h2": 2}
    assert set(res["runtimes"]) == {"ort-fp32", "ort-int8"}
    for blocks in res["runtimes"].values():
        assert len(blocks) == res["repeats"] == 2
        for b in blocks:  # each repeat's ratio is the teacher's p50 over the student's, from the same rounds
            assert set(b["ratio"]) == {"student", "student-h2"}
            for name, r in b["ratio"].items():
                assert r == b["p50_ms"]["teacher"] / b["p50_ms"][name] and r > 0
    for name, p in res["profile"].items():  # the parts never exceed the kernel total
        assert 0 < p["gemm_ms"] and p["gemm_ms"] + p["attention_ms"] <= p["total_ms"] + 1e-9, name
    md = out.with_suffix(".md").read_text()
    assert "| ort-int8 | student-h2 |" in md and "| student-h2 | 2 |" in md
    assert "Goal (the study's student >= 2x faster than the teacher in ONNX Runtime int8)" in md
    assert "**held**" in md or "**not held**" in md or "**unsettled**" in md
    out.with_suffix(".md").unlink()
    proc = latency("--smoke", "--report", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.with_suffix(".md").read_text() == md


def test_bad_heads_and_missing_results_stop_in_one_line(tmp_path):
    out = tmp_path / "kt-latency"
    for heads, want in (("a", "--heads: 'a' is not a comma-separated list"),
                        ("3", "intra_bottleneck_size=32 is not divisible by num_attention_heads=3")):
        proc = latency("--smoke", "--heads", heads, "--out", out, "--workdir", tmp_path / "work")
        assert proc.returncode != 0 and want in proc.stderr and "Traceback" not in proc.stderr
    proc = latency("--smoke", "--report", "--out", out)
    assert proc.returncode != 0 and "cannot read the results" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_siamese_pooling_times_the_bi_encoder_graphs(tmp_path):
    """--pooling siamese: both models are exported as bi-encoder classifiers (graphs of their own, not the [CLS]
    ones), the JSON and the report say so."""
    out = tmp_path / "kt-latency-siamese"
    proc = latency("--smoke", "--heads", "", "--pooling", "siamese", "--out", out, "--workdir", tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["pooling"] == "siamese" and res["command"].endswith("--pooling siamese")
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["kt-student-siamese-folded",
                                                                      "kt-teacher-siamese"]
    md = out.with_suffix(".md").read_text()
    assert "Both are `model.pooling=siamese` classifiers (bi-encoders)" in md and "| ort-int8 | student |" in md
