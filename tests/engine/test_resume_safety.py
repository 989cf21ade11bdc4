"""What `--resume` loads (issue 10 items 1, 2 and 5): no code runs from a checkpoint, every RNG stream comes back,
data workers leave the RNG streams alone, and a damaged checkpoint is skipped or named in one line."""

import builtins
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobilebert.checkpoint import read_state_dict
from mobilebert.cli import main
from mobilebert.data.prefetch import StepPrefetcher
from mobilebert.engine import build_optimizer, linear_schedule
from mobilebert.engine import checkpoint as C
from mobilebert.errors import CheckpointError

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.dense(x))


def _trained():
    torch.manual_seed(0)
    m = Tiny()
    opt = build_optimizer(m, "adamw", 1e-2)
    sched = linear_schedule(opt, 2, 10)
    for _ in range(3):
        m(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return m, opt, sched


def _draws() -> tuple:
    """One value from every random stream training uses."""
    out = (random.random(), float(np.random.rand()), torch.rand(2).tolist())
    if torch.cuda.is_available():
        out += (torch.rand(2, device="cuda").tolist(),)
    return out


def test_training_state_is_plain_and_every_rng_stream_is_restored(tmp_path):
    m, opt, sched = _trained()
    random.gauss(0, 1), np.random.randn()  # cached gaussians are part of the state too
    path = C.save_checkpoint(tmp_path, "s-step-0000003", model=m, optimizer=opt, scheduler=sched, step=3,
                             stage="s", extra={"best": {"score": np.float64(0.5), "n": np.int64(3)}})
    expected = _draws()
    # weights_only=True reads it: only tensors and plain values inside (numpy values converted at save time)
    raw = torch.load(path / C.STATE_FILE, weights_only=True)
    assert raw["format"] == C.FORMAT and type(raw["extra"]["best"]["score"]) is float
    _draws(), _draws()  # move every stream on
    m2 = Tiny()
    opt2 = build_optimizer(m2, "adamw", 1e-2)
    sched2 = linear_schedule(opt2, 2, 10)
    state = C.load_checkpoint(path, model=m2, optimizer=opt2, scheduler=sched2)
    assert _draws() == expected  # python, numpy, torch CPU (and CUDA when present)
    assert state["extra"] == {"best": {"score": 0.5, "n": 3}}
    assert sched2.state_dict() == sched.state_dict()
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"]) for i in s1)


def test_a_checkpoint_value_torch_cannot_load_safely_is_refused_at_save(tmp_path):
    m, opt, _ = _trained()
    with pytest.raises(TypeError, match=r"extra.*'f'.*Tiny"):
        C.save_checkpoint(tmp_path, "x", model=m, optimizer=opt, step=1, extra={"f": Tiny()})
    assert C.latest_checkpoint(tmp_path) is None


def _plant(file, marker):
    torch.save({"step": 1, "rng": [Payload(marker)]}, file)


@pytest.mark.parametrize("target", ["training_state", "weights_bin"])
def test_reduce_payload_in_any_torch_file_never_runs(tmp_path, target):
    m, opt, _ = _trained()
    path = C.save_checkpoint(tmp_path, "s-step-0000001", model=m, optimizer=opt, step=1, stage="s")
    marker = tmp_path / "pwned"
    if target == "training_state":
        _plant(path / C.STATE_FILE, marker)
        for load in (lambda: C.load_checkpoint(path, model=Tiny()), lambda: C.latest_checkpoint(tmp_path)):
            with pytest.raises(CheckpointError) as e:
                load()
            assert f"{path / C.STATE_FILE}: refused: it holds io.open" in str(e.value)
            assert "\n" not in str(e.value)
    else:
        torch.save({"w": Payload(marker)}, tmp_path / "pytorch_model.bin")
        with pytest.raises(CheckpointError, match="pytorch_model.bin: not a readable PyTorch weights file"):
            read_state_dict(tmp_path / "pytorch_model.bin")
    assert not marker.exists()


def test_checkpoint_of_the_old_format_is_one_clear_line(tmp_path):
    m, opt, _ = _trained()
    path = C.save_checkpoint(tmp_path, "s-step-0000001", model=m, optimizer=opt, step=1, stage="s")
    old = {"step": 1, "stage": "s", "rng": [{"python": random.getstate(), "numpy": np.random.get_state(),
                                              "torch": torch.get_rng_state()}], "extra": {}, "optimizer": None}
    torch.save(old, path / C.STATE_FILE)  # what mobilebert wrote before: a pickled numpy RNG state
    with pytest.raises(CheckpointError) as e:
        C.latest_checkpoint(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{path / C.STATE_FILE}: written by an older mobilebert") and "start the run again" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("damage", ["truncated", "empty"])
@pytest.mark.parametrize("file", [C.STATE_FILE, C.WEIGHTS_FILE, "meta.json"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage, file):
    m, opt, sched = _trained()
    for step in (1, 2):
        C.save_checkpoint(tmp_path, f"s-step-000000{step}", model=m, optimizer=opt, scheduler=sched, step=step,
                          stage="s", keep=2)
    bad = tmp_path / "checkpoints" / "s-step-0000002" / file
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2] if damage == "truncated" else b"")
    good = C.latest_checkpoint(tmp_path)
    assert good.name == "s-step-0000001"
    err = capsys.readouterr().err
    assert str(bad) in err and "resuming from the previous checkpoint, s-step-0000001" in err
    assert C.load_checkpoint(good, model=Tiny())["step"] == 1
    # the previous one damaged too: one line naming the newest damaged file
    prev = good / C.STATE_FILE
    prev.write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        C.latest_checkpoint(tmp_path)
    assert str(e.value).startswith(str(bad)) and "no older checkpoint" in str(e.value) and "\n" not in str(e.value)


def test_data_workers_leave_every_rng_stream_alone():
    """Starting DataLoader workers drew their base seed from the global torch RNG: a resumed run (which starts
    its workers after restoring the RNG) then left the uninterrupted run's dropout stream."""
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    expected = _draws()
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    batches = StepPrefetcher(lambda s: {"x": torch.tensor([s])}, start=0, stop=6, workers=2, prefetch=2)
    try:
        assert [int(batches(s)["x"]) for s in (0, 1, 4, 5)] == [0, 1, 4, 5]  # a restart at step 4 included
    finally:
        batches.close()
    assert _draws() == expected


# --------------------------------------------------------------------------------- through the CLI
TRAIN = ["teacher.overrides={num_hidden_layers: 1}", "data.seq_len=32", "data.max_predictions=5",
         "teacher.train.steps=2", "teacher.train.batch_size=4", "run.stages=[teacher]", "run.save_every=1",
         "data.eval_batches=1", "run.log_every=1"]


def test_train_resume_refuses_a_planted_payload_in_one_line(tmp_path, capsys, data_dir):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    args = ["train", str(REPO / "configs" / "tiny-test.yaml"), "--out", str(run),
            f"data.corpus=[{data_dir / 'corpus' / 'inaugural'}]", f"data.vocab={data_dir / 'bert-base-uncased' / 'vocab.txt'}",
            *TRAIN]
    assert main(args) == 0
    latest = C.latest_checkpoint(run)
    _plant(latest / C.STATE_FILE, marker)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{latest / C.STATE_FILE}: refused" in err, err
    assert not marker.exists()


def test_finetune_resume_refuses_payload_and_names_a_damaged_state(tmp_path, capsys, monkeypatch, data_dir):
    import mobilebert.engine as engine

    out, marker = tmp_path / "ft", tmp_path / "pwned"
    args = ["finetune", f"out={out}", "data.task=rte", f"data.dir={data_dir / 'glue'}",
            f"model.tokenizer={data_dir / 'bert-base-uncased' / 'vocab.txt'}", "train.batch_size=8",
            "train.max_steps=3", "train.progress=false", "data.max_train_examples=24", "data.max_eval_examples=8",
            "data.max_seq_length=32"]
    real_loop = engine.train_loop

    def loop_stopped_at_1(*a, **kw):
        kw["on_step_end"] = lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 1 else None
        return real_loop(*a, **kw)

    monkeypatch.setattr(engine, "train_loop", loop_stopped_at_1)
    assert main(args) == 130  # stopped by SIGTERM, checkpoint saved
    monkeypatch.setattr(engine, "train_loop", real_loop)
    state = C.latest_checkpoint(out) / C.STATE_FILE
    good = state.read_bytes()
    capsys.readouterr()
    for damage, expected in ((b"", "damaged or truncated"), (good[:len(good) // 3], "damaged or truncated"),
                             (None, "refused: it holds io.open")):
        if damage is None:
            _plant(state, marker)
        else:
            state.write_bytes(damage)
        assert main([*args, "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{state}: {expected}" in err, err
    assert not marker.exists()
    state.write_bytes(good)  # nothing was changed by the refused attempts: the run still resumes
    assert main([*args, "--resume"]) == 0
