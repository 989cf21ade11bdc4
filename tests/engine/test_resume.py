"""Crash safety of `mobilebert train` and `mobilebert finetune` (issue 3 item 7; issue 10 items 2 and 5).

SIGKILL at random moments and at exact points INSIDE checkpoint writes (the `MOBILEBERT_TEST_HOLD` hook of
`mobilebert.atomic` stops a write just before one of its renames) of a teacher, a PKT and a PD stage, and of
fine-tuning, with data workers and gradient accumulation, then `--resume`: the final weights and every logged
number are bit-exact with an uninterrupted run on CPU. A damaged newest checkpoint is skipped (said on stderr)
and the run still ends bit-exact. SIGTERM saves a checkpoint and exits.

Default suite: one kill sequence for `train` with data.workers=2 and grad_accum=2 (random kills in the teacher,
PKT-2 and PD stages, a kill inside a PKT-1 checkpoint write and one between a folder rename and its pointer
update), one for `finetune`, and the SIGTERM test. `-m slow` adds data.workers=0 and every kill point of one
checkpoint write for each kind of stage.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilebert.data import prepare
from mobilebert.engine import checkpoint as C
from mobilebert.engine.logging import read_metrics

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny-test.yaml"
# 2-layer teacher and student, short stages, a checkpoint every 3 steps, a log record every step.
STEPS = {"teacher": 16, "pkt-1": 8, "pkt-2": 8, "pd": 12}
OVERRIDES = ["teacher.overrides={num_hidden_layers: 2}", "student.overrides={num_hidden_layers: 2}",
             "data.seq_len=32", "data.max_predictions=5", "teacher.train.steps=16", "teacher.train.batch_size=8",
             "kt.steps=16", "kt.batch_size=8", "pd.steps=12", "pd.batch_size=8", "run.log_every=1",
             "run.save_every=3", "run.keep_checkpoints=2", "data.eval_batches=1"]
SCENARIOS = {
    "workers0": [],
    # configs/paper-full.yaml uses 4 workers; the loader must not touch the training's RNG streams
    "workers2-accum2": ["data.workers=2", "teacher.train.grad_accum=2", "kt.grad_accum=2", "pd.grad_accum=2"],
}
IGNORED = {"time", "tokens_per_s"}  # wall-clock fields; every other logged number must match exactly
# The renames of one checkpoint write, in order: model.safetensors, config.json, training_state.pt,
# settings.yaml, meta.json (inside the temporary folder), then the folder itself; then the `latest` pointer.
SAVE_POINTS = 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("resume") / "shards"
    prepare([data_dir / "corpus" / "inaugural"], data_dir / "bert-base-uncased" / "vocab.txt", out, workers=1)
    return out


def command(run: Path, shards: Path, extra=(), resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "mobilebert", "train", str(CONFIG), "--out", str(run), f"data.shards={shards}",
           "data.corpus=[]", *OVERRIDES, *extra]
    return cmd + (["--resume"] if resume else [])


def trajectory(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in IGNORED}
            for r in read_metrics(run / "metrics.jsonl") if "step" in r and "loss" in r]


def wait_for(proc: subprocess.Popen, done, what: str, timeout: float = 300) -> None:
    """Block until `done()` is true; the run ending first is a failure naming `what`."""
    end = time.time() + timeout
    while time.time() < end:
        if done():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def logged(run: Path, stage: str, step: int):
    return lambda: any(r.get("stage") == stage and r.get("step") == step for r in read_metrics(run / "metrics.jsonl"))


def kill_during(cmd: list[str], run: Path, kill: tuple, rng: random.Random, flag: Path) -> None:
    """Run `cmd` and SIGKILL it: kill = ("step", stage, step) a random moment after that step was logged, or
    ("hold", needle) at the write point the MOBILEBERT_TEST_HOLD hook names."""
    env = dict(os.environ)
    flag.unlink(missing_ok=True)
    if kill[0] == "hold":
        env.update(MOBILEBERT_TEST_HOLD=kill[1], MOBILEBERT_TEST_HOLD_FILE=str(flag))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if kill[0] == "hold":
            wait_for(proc, flag.is_file, f"write point {kill[1]}")
        else:
            wait_for(proc, logged(run, kill[1], kill[2]), f"{kill[1]} step {kill[2]}")
            time.sleep(rng.random() * 0.3)  # land anywhere in the following step(s), a save included
    finally:
        proc.kill()  # SIGKILL: no handler runs
        proc.wait()


def finish(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards):
    """Uninterrupted run of a scenario, computed once per module."""
    runs: dict[str, Path] = {}

    def get(scenario: str) -> Path:
        if scenario not in runs:
            run = tmp_path_factory.mktemp(f"ref-{scenario}") / "run"
            finish(command(run, shards, SCENARIOS[scenario]))
            traj = trajectory(run)
            assert [(r["stage"], r["step"]) for r in traj] == [(s, i) for s, n in STEPS.items() for i in range(1, n + 1)]
            runs[scenario] = run
        return runs[scenario]

    return get


def same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def assert_same_run(run: Path, ref: Path, what: str) -> None:
    assert trajectory(run) == trajectory(ref), what  # every logged loss term, lr and grad norm, bit for bit
    for name in ("teacher", "student"):
        assert same_tensors(run / name / "model.safetensors", ref / name / "model.safetensors"), f"{name}: {what}"
    assert not [p.name for p in run.rglob("*.tmp")], what  # no temporaries left once the run has finished


def kill_and_resume(tmp_path, shards, scenario: str, kills: list[tuple], rng, damage: bool = False) -> str:
    run, extra = tmp_path / "run", SCENARIOS[scenario]
    for i, kill in enumerate(kills):
        kill_during(command(run, shards, extra, resume=i > 0), run, kill, rng, tmp_path / "held")
    if damage:  # the newest checkpoint's training state truncated: resume from the one before, and say so
        latest = C.latest_checkpoint(run)
        state = latest / C.STATE_FILE
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    err = finish(command(run, shards, extra, resume=True))
    if damage:
        assert f"{state}: damaged or truncated" in err and "resuming from the previous checkpoint" in err, err
    return err


def test_sigkill_anywhere_with_workers_and_accumulation_then_resume_is_bit_exact(tmp_path, shards, reference):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    kills = [("step", "teacher", rng.randint(2, 14)),
             ("hold", f"pkt-1-step-0000006@{rng.randint(1, SAVE_POINTS)}"),  # inside a checkpoint write
             ("hold", "latest <- pkt-2-step-0000003@1"),  # folder renamed, pointer not yet updated
             ("step", "pkt-2", rng.randint(4, 7)),
             ("step", "pd", rng.randint(1, 11))]
    kill_and_resume(tmp_path, shards, "workers2-accum2", kills, rng, damage=True)
    assert_same_run(tmp_path / "run", reference("workers2-accum2"), f"kills {kills} (seed {seed})")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("save", ["teacher-step-0000006", "pkt-2-step-0000006", "pd-step-0000006"])
def test_sigkill_at_every_point_of_a_checkpoint_write(tmp_path, shards, reference, scenario, save):
    """Each rename of one checkpoint write and the pointer update, in turn, then a random kill; then resume."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    stage = save.rsplit("-step-", 1)[0]
    kills = [("hold", f"{save}@{k}") for k in range(1, SAVE_POINTS + 1)] + [("hold", f"latest <- {save}@1")]
    kills.append(("step", stage, rng.randint(7, STEPS[stage] - 1)))
    kill_and_resume(tmp_path, shards, scenario, kills, rng)
    assert_same_run(tmp_path / "run", reference(scenario), f"kills {kills} (seed {seed})")


@pytest.mark.slow
def test_sigkill_without_workers_then_resume_is_bit_exact(tmp_path, shards, reference):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    kills = [("step", "teacher", rng.randint(2, 10)), ("hold", f"teacher@{rng.randint(1, 7)}"),
             ("step", "pkt-2", rng.randint(1, 7)), ("step", "pd", rng.randint(1, 11))]
    kill_and_resume(tmp_path, shards, "workers0", kills, rng, damage=True)
    assert_same_run(tmp_path / "run", reference("workers0"), f"kills {kills} (seed {seed})")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, shards):
    run = tmp_path / "run"
    proc = subprocess.Popen(command(run, shards), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(proc, logged(run, "pkt-1", 2), "pkt-1 step 2")
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
    logged_steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r.get("stage") == "pkt-1" and "loss" in r]
    assert meta["step"] == logged_steps[-1]  # the checkpoint is the last step it finished


# ------------------------------------------------------------------------------------------------ finetune
def finetune_command(out: Path, data_dir: Path, resume: bool = False) -> list[str]:
    vocab = data_dir / "bert-base-uncased" / "vocab.txt"
    cmd = [sys.executable, "-m", "mobilebert", "finetune", f"out={out}", "data.task=mrpc",
           f"data.dir={data_dir / 'glue'}", f"model.tokenizer={vocab}", "data.max_train_examples=48",
           "data.max_eval_examples=24", "data.max_seq_length=32", "train.batch_size=8", "train.grad_accum=2",
           "train.max_steps=10", "train.eval_every=3", "train.save_every=2", "train.log_every=1",
           "train.progress=false", "optim.lr=1e-3", "model.dropout=0.1"]  # dropout on: RNG streams must resume
    return cmd + (["--resume"] if resume else [])


def test_finetune_sigkill_anywhere_then_resume_is_bit_exact(tmp_path, data_dir):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    # Exact write points first, in the order the run reaches them (save_every=2, eval_every=3), so no kill can
    # be overtaken by the run before it: inside the FIRST checkpoint write (killed before any checkpoint exists,
    # --resume starts the run over), the first swap of the best model's folder (step 3), inside the step-6 write;
    # then a random moment near the end.
    kills = [("hold", f"finetune-step-0000002@{rng.randint(1, SAVE_POINTS)}"),
             ("hold", f"{tmp_path / 'cut' / 'best'}@1"),
             ("hold", f"finetune-step-0000006@{rng.randint(1, SAVE_POINTS)}"),
             ("step", "finetune", rng.randint(7, 9))]
    finetune_kill_and_resume(tmp_path, data_dir, kills, rng, f"kills {kills} (seed {seed})")


@pytest.mark.slow
@pytest.mark.parametrize("point", [*range(1, SAVE_POINTS + 1), "latest"])
def test_finetune_sigkill_inside_its_first_checkpoint_then_resume_is_bit_exact(tmp_path, data_dir, point):
    """Every point of the first checkpoint write: before it completes no checkpoint exists, and --resume starts
    the run over from step 0 (it used to refuse the folder, as a fresh run does)."""
    hold = "latest <- finetune-step-0000002@1" if point == "latest" else f"finetune-step-0000002@{point}"
    finetune_kill_and_resume(tmp_path, data_dir, [("hold", hold)], random.Random(0), hold)


def finetune_kill_and_resume(tmp_path, data_dir, kills: list[tuple], rng, what: str) -> None:
    ref, out = tmp_path / "ref", tmp_path / "cut"
    finish(finetune_command(ref, data_dir))
    for i, kill in enumerate(kills):
        kill_during(finetune_command(out, data_dir, resume=i > 0), out, kill, rng, tmp_path / "held")
    # On a fast machine the last run can reach its end (and remove its checkpoints) before the kill lands.
    if (out / "checkpoints" / "latest").is_file() or not (out / "results.json").is_file():
        finish(finetune_command(out, data_dir, resume=True))
    a, b = json.loads((ref / "results.json").read_text()), json.loads((out / "results.json").read_text())
    for key in ("final_loss", "best", "best_step", "history", "steps"):
        assert a[key] == b[key], f"{key}: {what}"
    assert same_tensors(ref / "best" / "model.safetensors", out / "best" / "model.safetensors"), what
    assert trajectory(out) == trajectory(ref), what
    assert not [p.name for p in out.rglob("*.tmp")], what
