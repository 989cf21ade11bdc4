"""Data parallelism: 2 processes (torchrun, gloo on CPU) give the losses of 1 process at the same global batch."""

import subprocess
import sys
from pathlib import Path

import pytest

from mobilebert.data import prepare
from mobilebert.engine.logging import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny-test.yaml"
# Dropout off in the teacher so both runs compute the same function (ranks draw different dropout masks).
OVERRIDES = ["teacher.overrides={num_hidden_layers: 2, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
             "student.overrides={num_hidden_layers: 2}", "data.seq_len=32", "data.max_predictions=5",
             "teacher.train.steps=6", "teacher.train.batch_size=8", "kt.steps=4", "kt.batch_size=8", "pd.steps=6",
             "pd.batch_size=8", "run.log_every=1", "run.save_every=0", "data.eval_batches=0"]


def losses(run: Path) -> list[tuple]:
    keys = ("loss", "mlm", "nsp", "kd", "fmt", "at", "beta", "gamma", "grad_norm")
    return [(r["stage"], r["step"], {k: r[k] for k in keys if k in r})
            for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def test_two_process_ddp_matches_one_process(tmp_path, data_dir):
    shards = tmp_path / "shards"
    prepare([data_dir / "corpus" / "inaugural"], data_dir / "bert-base-uncased" / "vocab.txt", shards, workers=1)
    common = [str(CONFIG), f"data.shards={shards}", "data.corpus=[]", *OVERRIDES]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = subprocess.run([sys.executable, "-m", "mobilebert", "train", *common, "--out", str(one)],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p1.returncode == 0, p1.stderr[-3000:]
    # 2 ranks x 2 micro-batches of 2 = the same global batch of 8 (exercises DDP no_sync too)
    p2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                         "-m", "mobilebert", "train", *common, "--out", str(two), "teacher.train.grad_accum=2",
                         "kt.grad_accum=2", "pd.grad_accum=2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p2.returncode == 0, p2.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert [x[:2] for x in a] == [x[:2] for x in b] and len(a) == 6 + 4 + 4 + 6
    for (stage, step, x), (_, _, y) in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=2e-4, abs=1e-5), f"{stage} step {step} {k}: {x[k]} vs {y[k]}"
    assert p2.stdout.count("resolved settings") == 1  # rank 0 alone prints, logs and saves
    starts = [r for r in read_metrics(two / "metrics.jsonl") if r.get("event") == "stage_start"]
    assert len(starts) == 4 and all(r["world_size"] == 2 for r in starts)
    assert (two / "student" / "model.safetensors").is_file() and (two / "teacher" / "config.json").is_file()
