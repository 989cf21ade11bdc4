"""Settings shared by `train` and `finetune` (mobilebert.recipes.settings): one rule and one message per concept,
YAML files refused with one line naming file, key and line, runs too large for the machine refused with
their memory estimate, SIGTERM honoured in set-up, and no half-written run folder after a refusal
(issue 10, items 3, 4, 5, 6, 7, 8). Every refusal: exit 2, one line on stderr, no traceback, and the
output folder absent (or unchanged) afterwards."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mobilebert.cli import main
from mobilebert.recipes.settings import read_yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny-test.yaml"
FT_QUICK = ["train.batch_size=16", "train.max_steps=2", "train.log_every=1", "train.progress=false",
            "data.max_train_examples=32", "data.max_eval_examples=16", "data.max_seq_length=32",
            "data.predict_test=false"]


@pytest.fixture(scope="module")
def vocab(data_dir):
    return str(data_dir / "bert-base-uncased" / "vocab.txt")


def train_data(data_dir) -> list[str]:
    return [f"data.corpus=[{data_dir / 'corpus' / 'inaugural'}]", f"data.vocab={data_dir / 'bert-base-uncased' / 'vocab.txt'}"]


def rte(data_dir, vocab) -> list[str]:
    return ["data.task=rte", f"data.dir={data_dir / 'glue'}", f"model.tokenizer={vocab}"]


def refused(capsys, argv) -> str:
    """Run the CLI in-process; it must exit 2 with one line on stderr. Returns that line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- YAML files
@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_config_is_refused(tmp_path, capsys, data_dir, text):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text(text)
    # --dry-run: the refusal comes first; without it, a regression would start the paper-scale defaults
    err = refused(capsys, ["train", cfg, "--out", tmp_path / "run", *train_data(data_dir), "--dry-run"])
    assert f"{cfg}: the config file is empty" in err
    assert not (tmp_path / "run").exists()
    err = refused(capsys, ["finetune", cfg, f"out={tmp_path / 'ft'}"])
    assert "is empty" in err and not (tmp_path / "ft").exists()


def test_duplicate_key_names_file_key_and_line(tmp_path, capsys, data_dir):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(CONFIG.read_text() + "kt:\n  strategy: jkt\n")  # a second kt: block would replace the first
    first = 1 + CONFIG.read_text().splitlines().index("kt:")
    second = len(CONFIG.read_text().splitlines()) + 1
    err = refused(capsys, ["train", cfg, "--out", tmp_path / "run", *train_data(data_dir), "--dry-run"])
    assert f"{cfg}: line {second}: key 'kt' is given twice (first at line {first})" in err
    assert not (tmp_path / "run").exists()
    nested = tmp_path / "nested.yaml"
    nested.write_text("optim:\n  lr: 1.0e-4\n  warmup: 0.1\n  lr: 3.0e-4\n")
    err = refused(capsys, ["finetune", nested, f"out={tmp_path / 'ft'}"])
    assert f"{nested}: line 4: key 'lr' is given twice (first at line 2)" in err
    # merge keys (<<) may still be overridden: that is what they are for
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b {lr: 1.0, warmup: 0.1}\noptim:\n  <<: *b\n  lr: 2.0\n")
    assert read_yaml(merged)["optim"] == {"lr": 2.0, "warmup": 0.1}


def test_config_that_is_not_utf8(tmp_path, capsys):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("optim:\n  lr: 1.0e-4  # r\xe9glage\n".encode("latin-1"))
    err = refused(capsys, ["finetune", cfg, f"out={tmp_path / 'ft'}"])
    assert f"{cfg}: not UTF-8 text" in err and not (tmp_path / "ft").exists()


# ------------------------------------------------------------------------------ the same rules for both
@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr: must be a positive finite number, got 0.0"),
    ("optim.lr=-1", "optim.lr: must be a positive finite number, got -1.0"),
    ("optim.lr=.nan", "optim.lr: must be a positive finite number, got nan"),
    ("train.epochs=-1", "train.epochs: must be a positive finite number, got -1.0"),
    ("optim.warmup=5", "optim.warmup: must be in [0, 1) (a fraction of the training steps), got 5.0"),
    ("train.batch_size=0", "train.batch_size: must be a positive integer, got 0"),
    ("train.batch_size=-4", "train.batch_size: must be a positive integer, got -4"),
    ("train.grad_accum=3", "train.batch_size: 16 is not divisible by train.grad_accum=3"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: must be >= 0, got -0.1"),
    ("data.max_seq_length=600", "data.max_seq_length: 600 is longer than model.init's max_position_embeddings=512"),
])
def test_finetune_refuses_bad_values(tmp_path, capsys, data_dir, vocab, override, message):
    out = tmp_path / "ft"
    err = refused(capsys, ["finetune", f"out={out}", *FT_QUICK, *rte(data_dir, vocab), override])
    assert message in err and not out.exists()


@pytest.mark.parametrize("override, message", [
    ("kt.optim.lr=0", "kt.optim.lr: must be a positive finite number, got 0.0"),
    ("pd.optim.lr=.nan", "pd.optim.lr: must be a positive finite number, got nan"),
    ("pd.optim.warmup_steps=-1", "pd.optim.warmup_steps: must be >= 0, got -1"),
    ("kt.cls_weight=-2", "kt.cls_weight: must be >= 0, got -2"),
    ("kt.batch_size=0", "kt.batch_size: must be a positive integer, got 0"),
    ("pd.grad_accum=3", "pd.batch_size: 16 is not divisible by pd.grad_accum=3"),
    ("teacher.train.optim.weight_decay=-0.1", "teacher.train.optim.weight_decay: must be >= 0, got -0.1"),
    ("data.seq_len=600", "data.seq_len: 600 is longer than teacher max_position_embeddings=512"),
    ("student.overrides={vocab_size: 100}", "student.overrides.vocab_size: 100 is smaller than the data's vocabulary"),
    ("student.preset=mobilebert-huge", "student.preset: unknown preset 'mobilebert-huge'; choose one of mobilebert, "),
])
def test_train_refuses_bad_values_with_the_same_messages(tmp_path, capsys, data_dir, override, message):
    out = tmp_path / "run"
    err = refused(capsys, ["train", CONFIG, "--out", out, *train_data(data_dir), override, "--dry-run"])
    assert message in err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine (or torch build) without CUDA")
def test_cuda_device_without_cuda(tmp_path, capsys, data_dir, vocab):
    err = refused(capsys, ["train", CONFIG, "--out", tmp_path / "run", *train_data(data_dir), "run.device=cuda"])
    assert err.startswith("mobilebert train: error: run.device: cuda is not available")
    err = refused(capsys, ["finetune", f"out={tmp_path / 'ft'}", *FT_QUICK, *rte(data_dir, vocab), "train.device=cuda"])
    assert "train.device: cuda is not available" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "ft").exists()


# -------------------------------------------------------------------------------- too large for the machine
def test_train_refuses_a_run_too_large_for_the_machine(tmp_path, capsys, monkeypatch, data_dir):
    """The estimate is compared with what the machine has (here made 128 MiB, so that a regression cannot start
    a run that exhausts the real machine); run.allow_large=true starts it anyway."""
    from mobilebert.recipes import estimate as E

    out = tmp_path / "run"
    small = ["run.stages=[teacher]", "teacher.train.steps=1", "teacher.train.batch_size=256", "run.save_every=0"]
    monkeypatch.setattr(E, "available_memory", lambda device: (128 << 20, "this machine (128 MiB available)"))
    err = refused(capsys, ["train", CONFIG, "--out", out, *train_data(data_dir), *small])
    assert err.startswith("mobilebert train: error: teacher: the run needs about 1.")
    assert "GiB (weights+gradients+optimizer 48 MiB, activations 1." in err and "at micro-batch 256)" in err
    assert ("but this machine (128 MiB available); lower teacher.train.batch_size or raise teacher.train.grad_accum, "
            "or set run.allow_large=true to start it anyway") in err
    assert not out.exists()
    assert main(["train", str(CONFIG), "--out", str(out), *train_data(data_dir), *small, "run.allow_large=true"]) == 0
    assert (out / "teacher" / "model.safetensors").is_file()


def test_paper_scale_defaults_are_refused_on_this_machine(tmp_path, capsys, data_dir):
    """IB-BERT_LARGE at batch 4096 (what an empty config used to start): --dry-run shows the refusal a real run
    gets on this machine (the real run is not started here: on a regression it would exhaust the machine)."""
    out = tmp_path / "run"
    big = ["teacher.preset=ibbert-large", "teacher.train.batch_size=4096", "run.stages=[teacher]", "data.seq_len=128"]
    assert main(["train", str(CONFIG), "--out", str(out), *train_data(data_dir), *big, "--dry-run"]) == 0
    stdout = capsys.readouterr().out
    assert "note: teacher: the run needs about " in stdout and "GiB available); lower teacher.train.batch_size" in stdout
    assert "memory estimate:" in stdout and not out.exists()
    assert main(["train", str(CONFIG), "--out", str(out), *train_data(data_dir), *big, "run.allow_large=true",
                 "--dry-run"]) == 0
    assert "note: teacher" not in capsys.readouterr().out and not out.exists()


def test_finetune_refuses_a_run_too_large_for_the_machine(tmp_path, capsys, monkeypatch, data_dir, vocab):
    """A machine with 16 MiB available (less than the weights, gradients and AdamW state): refused, naming the
    model; train.allow_large=true starts it anyway."""
    from mobilebert.recipes import estimate as E

    monkeypatch.setattr(E, "available_memory", lambda device: (16 << 20, "this machine (16 MiB available)"))
    out = tmp_path / "ft"
    err = refused(capsys, ["finetune", f"out={out}", *FT_QUICK, *rte(data_dir, vocab)])
    assert err.startswith("mobilebert finetune: error: finetune: the run needs about ")
    assert "but this machine (16 MiB available); choose a smaller model.init" in err
    assert "train.allow_large=true" in err and not out.exists()
    assert main(["finetune", f"out={out}", *FT_QUICK, *rte(data_dir, vocab), "train.allow_large=true"]) == 0
    assert (out / "results.json").is_file()


# ----------------------------------------------------------------------------------- run folders
def test_finetune_into_a_finished_run_is_refused(tmp_path, capsys, data_dir, vocab):
    out = tmp_path / "ft"
    assert main(["finetune", f"out={out}", *FT_QUICK, *rte(data_dir, vocab)]) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert {"results.json", "settings.yaml", "best/model.safetensors"} <= set(before)
    err = refused(capsys, ["finetune", f"out={out}", *FT_QUICK, *rte(data_dir, vocab), "optim.lr=1e-3"])
    assert f"out: {out} holds another run; pass --resume to continue it or choose another out" in err
    assert snapshot(out) == before


def test_damaged_shards_leave_no_run_folder(tmp_path, capsys, data_dir):
    from mobilebert.data import prepare

    shards = tmp_path / "shards"
    prepare([data_dir / "corpus" / "inaugural"], data_dir / "bert-base-uncased" / "vocab.txt", shards, workers=1)
    tokens = next(shards.glob("*.tokens.bin"))
    tokens.write_bytes(tokens.read_bytes()[:100])  # truncated
    out = tmp_path / "run"
    args = ["train", CONFIG, "--out", out, f"data.shards={shards}", "data.corpus=[]"]
    err = refused(capsys, args)
    assert str(tokens) in err and not out.exists()


def test_damaged_student_init_leaves_no_run_folder(tmp_path, capsys, data_dir):
    from mobilebert import MobileBertForPreTraining, get_config

    init = tmp_path / "student"
    MobileBertForPreTraining(get_config("debug-mobilebert")).save_pretrained(init)
    weights = init / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    out = tmp_path / "run"
    err = refused(capsys, ["train", CONFIG, "--out", out, *train_data(data_dir), f"student.init={init}"])
    assert str(init) in err and not out.exists()
    # the corrected command is not refused as "holds another run"
    assert main(["train", str(CONFIG), "--out", str(out), *train_data(data_dir), "--dry-run"]) == 0


def test_sweep_with_a_missing_data_folder_leaves_nothing(tmp_path, capsys, vocab):
    out = tmp_path / "sweep"
    err = refused(capsys, ["sweep", "data.task=rte", f"data.dir={tmp_path / 'missing'}", f"model.tokenizer={vocab}",
                           "--out", out, "--batch-sizes", "16", "--lrs", "1e-3", "--epochs", "1", "--seeds", "1"])
    assert "missing" in err and not out.exists()


# ------------------------------------------------------------------------------------ SIGTERM in set-up
DRIVER = textwrap.dedent("""
    import importlib, os, signal, sys, time
    module, name, attr, then_sleep = sys.argv[1:5]
    owner = importlib.import_module(module)
    if attr != "-":
        owner = getattr(owner, attr)
    real = getattr(owner, name)
    def patched(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)   # as if sent now, from outside
        if then_sleep == "1":
            time.sleep(300)                    # a step that does not end on its own
        return real(*a, **k)
    setattr(owner, name, patched)
    from mobilebert.cli import main
    sys.exit(main(sys.argv[5:]))
""")


def sigterm_at(where: tuple, argv: list, sleep: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, *where, "1" if sleep else "0", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("where, sleep", [
    (("mobilebert.data.shards", "prepare", "-"), False),                # preparing the corpus
    (("mobilebert.recipes.train", "_new_model", "Pipeline"), False),  # building the teacher
    (("mobilebert.distill.steps", "__call__", "MlmNspLoss"), True),      # inside a first step that never ends
], ids=["data", "model", "first-step"])
def test_sigterm_during_train_setup(tmp_path, data_dir, where, sleep):
    out = tmp_path / "run"
    proc = sigterm_at(where, ["train", CONFIG, "--out", out, *train_data(data_dir)], sleep)
    assert proc.returncode == 128 + signal.SIGINT, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.strip().splitlines()[-1] == "mobilebert train: interrupted" and "Traceback" not in proc.stderr
    assert not out.exists()  # a fresh run stopped before its first checkpoint leaves nothing


def test_sigterm_during_finetune_setup(tmp_path, data_dir, vocab):
    out = tmp_path / "ft"
    proc = sigterm_at(("mobilebert.tasks", "load_model_for_task", "-"),
                      ["finetune", f"out={out}", *FT_QUICK, *rte(data_dir, vocab)])
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "mobilebert finetune: interrupted" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_sweep_stopped_by_sigterm_records_nothing_and_continues(tmp_path, capsys, monkeypatch, data_dir, vocab):
    """SIGTERM inside a sweep's run: exit 130 without recording the unfinished run as done; the same command
    then resumes that run from its checkpoint and records it once."""
    import json
    import os

    import mobilebert.engine as engine

    real_loop = engine.train_loop

    def loop_killed_at_1(*a, **kw):
        kw["on_step_end"] = lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 1 else None
        return real_loop(*a, **kw)

    out = tmp_path / "sweep"
    argv = ["sweep", *rte(data_dir, vocab), "data.max_train_examples=32", "data.max_eval_examples=16",
            "data.max_seq_length=32", "train.progress=false", "--out", str(out), "--batch-sizes", "16",
            "--lrs", "1e-3", "--epochs", "1", "--seeds", "1"]
    monkeypatch.setattr(engine, "train_loop", loop_killed_at_1)
    assert main(argv) == 130
    capsys.readouterr()
    assert not (out / "sweep.jsonl").exists()
    assert (out / "runs" / "bs16_lr0.001_ep1_seed1" / "checkpoints" / "latest").is_file()
    monkeypatch.setattr(engine, "train_loop", real_loop)
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert [r["run"] for r in records] == ["bs16_lr0.001_ep1_seed1"] and records[0]["steps"] == 2
