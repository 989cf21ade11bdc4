"""`mobilebert.atomic` and the writers routed through it (issue 10 items 5 and 9): a full disk is one line naming
the path with nothing half-written, temporaries are cleaned up, and files get the usual permissions."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import mobilebert as mb
from mobilebert import atomic
from mobilebert.cli import main
from mobilebert.engine import checkpoint as C
from mobilebert.engine.logging import MetricsLogger
from mobilebert.recipes.finetune_settings import FinetuneSettings
from mobilebert.recipes.settings import dump_settings

REPO = Path(__file__).resolve().parents[1]


def small():
    return mb.MobileBertForSequenceClassification(mb.get_config("debug-mobilebert", vocab_size=64))


def full_disk(monkeypatch):
    """Every write of mobilebert.atomic fails as on a full disk."""
    def enospc(fh, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(atomic, "_write", enospc)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_write_replaces_whole_and_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic.write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    full_disk(monkeypatch)
    with pytest.raises(atomic.WriteError) as e:
        atomic.write_json(path, {"x": 2})
    assert str(e.value) == f"{path}: cannot write: no space left on device; nothing was written"
    assert json.loads(path.read_text()) == {"x": 1} and listing(tmp_path) == ["a.json"]  # no temporary left


@pytest.mark.parametrize("code, reason", [(errno.EDQUOT, "disk quota exceeded"), (errno.EACCES, "permission denied"),
                                          (errno.EROFS, "read-only file system")])
def test_other_disk_errors_are_one_line_and_others_are_not_hidden(tmp_path, monkeypatch, code, reason):
    def fail(fh, data):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(atomic, "_write", fail)
    with pytest.raises(atomic.WriteError, match=f"x.bin: cannot write: {reason}"):
        atomic.write_bytes(tmp_path / "x.bin", b"1")
    monkeypatch.setattr(atomic, "_write", lambda fh, data: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError) as e:  # a hardware error is not the user's to fix: it keeps its traceback
        atomic.write_bytes(tmp_path / "x.bin", b"1")
    assert not isinstance(e.value, atomic.WriteError) and listing(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".a.txt.{pid}-0123abcd.tmp").write_text("half")
    (tmp_path / f".a.txt.{os.getpid()}-0123abcd.tmp").write_text("a live writer's")  # not ours to remove
    atomic.write_text(tmp_path / "a.txt", "whole")
    assert listing(tmp_path) == [f".a.txt.{os.getpid()}-0123abcd.tmp", "a.txt"]


def test_atomic_dir_swaps_whole_folders(tmp_path, monkeypatch):
    out = tmp_path / "best"
    with atomic.atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("crash while writing")
    assert (out / "a").read_text() == "1" and listing(tmp_path) == ["best", "best/a"]
    with atomic.atomic_dir(out) as tmp:
        (tmp / "b").write_text("3")
    assert listing(tmp_path) == ["best", "best/b"]


def test_written_files_and_folders_get_the_usual_permissions(tmp_path, umask022):
    """mkstemp made checkpoint and model files 0600: unreadable by the people a model is given to."""
    m = small()
    m.save_pretrained(tmp_path / "model")
    C.save_checkpoint(tmp_path / "run", "s-step-0000001", model=m, step=1, stage="s", settings={"a": 1})
    atomic.write_text(tmp_path / "t.txt", "x")
    with atomic.atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("y")
    for p in tmp_path.rglob("*"):
        assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), p


def test_full_disk_in_model_checkpoint_settings_and_metrics_writers(tmp_path, monkeypatch):
    m = small()
    m.save_pretrained(tmp_path / "model")
    good = C.save_checkpoint(tmp_path / "run", "s-step-0000001", model=m, step=1, stage="s")
    before = {"model": listing(tmp_path / "model"), "run": listing(tmp_path / "run")}
    logger = MetricsLogger(tmp_path / "run", tensorboard=False)
    logger.log("s", 1, {"loss": 1.0})
    full_disk(monkeypatch)
    writers = {
        "model.safetensors": lambda: m.save_pretrained(tmp_path / "model"),
        "checkpoints/s-step-0000002": lambda: C.save_checkpoint(tmp_path / "run", "s-step-0000002", model=m, step=2,
                                                                stage="s"),
        "settings.yaml": lambda: dump_settings(FinetuneSettings(), tmp_path / "run" / "settings.yaml"),
    }
    for name, write in writers.items():
        with pytest.raises(atomic.WriteError, match=f"{name}: cannot write: no space left on device"):
            write()
    assert listing(tmp_path / "model") == before["model"]
    assert C.latest_checkpoint(tmp_path / "run") == good
    logger.close()
    monkeypatch.undo()

    def enospc_append(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    logger = MetricsLogger(tmp_path / "run", tensorboard=False, resume_from=("s", 1))
    logger._fh.close()
    logger._fh = type("FullDisk", (), {"write": enospc_append, "flush": lambda self: None, "close": lambda self: None})()
    with pytest.raises(atomic.WriteError, match="metrics.jsonl: cannot write: no space left on device"):
        logger.log("s", 2, {"loss": 0.5})


# ------------------------------------------------------------------------------- a real full disk (tmpfs)
@pytest.fixture
def tiny_disk(tmp_path):
    """A 96 KiB tmpfs (root only); skipped where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_real_full_disk_for_models_checkpoints_and_the_cli(tiny_disk, data_dir, capsys):
    m = small()  # about 600 KB of weights: does not fit
    with pytest.raises(atomic.WriteError, match=f"{tiny_disk / 'model'}/model.safetensors: cannot write: no space"):
        m.save_pretrained(tiny_disk / "model")
    with pytest.raises(atomic.WriteError, match="s-step-0000001: cannot write: no space left on device"):
        C.save_checkpoint(tiny_disk / "run", "s-step-0000001", model=nn.Linear(200, 200), step=1, stage="s")
    assert C.latest_checkpoint(tiny_disk / "run") is None
    assert not [p for p in tiny_disk.rglob("*") if p.is_file()]  # nothing half-written anywhere
    # the whole CLI: fine-tuning into the full disk is one line and exit 2
    rc = main(["finetune", f"out={tiny_disk / 'ft'}", "data.task=rte", f"data.dir={data_dir / 'glue'}",
               f"model.tokenizer={data_dir / 'bert-base-uncased' / 'vocab.txt'}", "train.batch_size=8",
               "train.max_steps=2", "train.progress=false", "data.max_train_examples=16", "data.max_eval_examples=8",
               "data.max_seq_length=32"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "cannot write: no space left on device" in err, err
    assert str(tiny_disk / "ft") in err
    assert not [p for p in tiny_disk.rglob("*") if p.is_file() and ".tmp" in p.name]


def test_data_prepare_and_train_into_a_full_disk_are_one_line(tiny_disk, data_dir, capsys):
    corpus, vocab = data_dir / "corpus" / "inaugural", data_dir / "bert-base-uncased" / "vocab.txt"
    rc = main(["data", "prepare", str(corpus), "--vocab", str(vocab), "--out", str(tiny_disk / "shards"),
               "--workers", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and f"{tiny_disk / 'shards'}: cannot write: no space left" in err, err
    rc = main(["train", str(REPO / "configs" / "tiny-test.yaml"), "--out", str(tiny_disk / "run"),
               f"data.corpus=[{corpus}]", f"data.vocab={vocab}", "run.stages=[teacher]", "teacher.train.steps=2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "cannot write: no space left on device" in err, err
    assert not list(tiny_disk.iterdir())  # a fresh run that could not start leaves nothing behind


def test_cli_safety_net_names_the_final_path_not_a_temporary(tmp_path):
    tmp = atomic.temp_path(tmp_path / "model.onnx")
    assert tmp.suffix == ".onnx" and tmp.parent == tmp_path and not tmp.exists()
    err = atomic.as_write_error(OSError(errno.ENOSPC, "No space left on device", str(tmp)))
    assert str(err) == f"{tmp_path / 'model.onnx'}: cannot write: no space left on device; nothing was written"
    assert atomic.as_write_error(OSError(errno.ENOENT, "No such file", "x")) is None
