"""benchmarks/siamese_trim.py: the smoke run exports a siamese classifier with and without in-graph row trimming,
times both on real MRPC pairs in both serving modes, fp32 and int8, and writes the report."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_smoke_times_trimmed_against_untrimmed_rows(tmp_path, data_dir):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "siamese_trim.py"), "--smoke", "--glue",
                           str(data_dir / "glue"), "--out", str(tmp_path / "t")], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["pairs"] == 8 and len(res["results"]) == 4
    for key, r in res["results"].items():
        assert r["untrimmed"] > 0 and r["trimmed"] > 0 and r["speed-up"] == r["untrimmed"] / r["trimmed"], key
    assert "| ort-int8, padded to 128 |" in (tmp_path / "t.md").read_text()
