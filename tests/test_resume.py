"""Crash safety of `mobilebert train`: SIGKILL at random points of a teacher, a PKT and a PD stage, then
`--resume`, reproduces the uninterrupted run bit for bit on CPU; SIGTERM saves a checkpoint and exits."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mobilebert.data import prepare
from mobilebert.engine import checkpoint as C
from mobilebert.engine.logging import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny-test.yaml"
# 2-layer teacher and student, short stages, a checkpoint every 3 steps, a log record every step.
STEPS = {"teacher": 16, "pkt-1": 8, "pkt-2": 8, "pd": 12}
OVERRIDES = ["teacher.overrides={num_hidden_layers: 2}", "student.overrides={num_hidden_layers: 2}",
             "data.seq_len=32", "data.max_predictions=5", "teacher.train.steps=16", "teacher.train.batch_size=8",
             "kt.steps=16", "kt.batch_size=8", "pd.steps=12", "pd.batch_size=8", "run.log_every=1",
             "run.save_every=3", "run.keep_checkpoints=2", "data.eval_batches=1"]
IGNORED = {"time", "tokens_per_s"}  # wall-clock fields; every other logged number must match exactly


@pytest.fixture(scope="module")
def shards(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("resume") / "shards"
    prepare([data_dir / "corpus" / "inaugural"], data_dir / "bert-base-uncased" / "vocab.txt", out, workers=1)
    return out


def command(run: Path, shards: Path, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "mobilebert", "train", str(CONFIG), "--out", str(run), f"data.shards={shards}",
           "data.corpus=[]", *OVERRIDES]
    return cmd + (["--resume"] if resume else [])


def trajectory(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in IGNORED}
            for r in read_metrics(run / "metrics.jsonl") if "step" in r and "loss" in r]


def wait_for(proc: subprocess.Popen, run: Path, stage: str, step: int, timeout: float = 300) -> None:
    """Block until the run has logged (stage, step)."""
    end = time.time() + timeout
    while time.time() < end:
        if any(r.get("stage") == stage and r.get("step") == step for r in read_metrics(run / "metrics.jsonl")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {stage} step {step}: "
                                 f"{proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {stage} step {step}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards):
    run = tmp_path_factory.mktemp("ref") / "run"
    proc = subprocess.run(command(run, shards), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    traj = trajectory(run)
    assert [(r["stage"], r["step"]) for r in traj] == [(s, i) for s, n in STEPS.items() for i in range(1, n + 1)]
    return run


def assert_same_run(run: Path, ref: Path) -> None:
    assert trajectory(run) == trajectory(ref)  # every logged loss term, lr and grad norm, bit for bit
    for name in ("teacher", "student"):
        a, b = load_file(run / name / "model.safetensors"), load_file(ref / name / "model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"{name} weights differ"


def test_sigkill_in_teacher_pkt_and_pd_then_resume_is_bit_exact(tmp_path, shards, reference):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    run = tmp_path / "run"
    kills = [("teacher", rng.randint(2, 15)), ("pkt-2", rng.randint(1, 7)), ("pd", rng.randint(1, 11))]
    for i, (stage, step) in enumerate(kills):
        proc = subprocess.Popen(command(run, shards, resume=i > 0), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            wait_for(proc, run, stage, step)
            time.sleep(rng.random() * 0.3)  # land anywhere in the following step(s)
        finally:
            proc.kill()  # SIGKILL: no handler runs
            proc.wait()
    proc = subprocess.run(command(run, shards, resume=True), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"kills {kills} (seed {seed}): {proc.stderr[-3000:]}"
    assert_same_run(run, reference)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, shards):
    run = tmp_path / "run"
    proc = subprocess.Popen(command(run, shards), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(proc, run, "pkt-1", 2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM" in out and "Traceback" not in err
    latest = C.latest_checkpoint(run)
    meta = C.read_meta(latest)
    assert meta["stage"] == "pkt-1" and meta["step"] >= 2
    assert {"model.safetensors", "config.json", "training_state.pt"} <= {p.name for p in latest.iterdir()}
    assert not list((run / "checkpoints").glob("*.tmp"))
    logged = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r.get("stage") == "pkt-1" and "loss" in r]
    assert meta["step"] == logged[-1]  # the checkpoint is the last step it finished
