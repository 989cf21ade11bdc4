"""benchmarks/kt_study_pool.py: the smoke study run by a pool of workers through the real CLI (every cell of the
rows asked for, the logs and loss curves copied out), the deadline that stops late pre-training rows last-listed
first, the carried teacher and data (--pack), and the study's --device and teacher-folder settings."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import kt_study_pool as pool  # noqa: E402


def test_pool_runs_the_rows_cells_with_workers_and_copies_results_and_logs(tmp_path, data_dir):
    state, out = tmp_path / "state", tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH / "kt_study_pool.py"), "--smoke", "--state", str(state),
                           "--rows", "pkt-adamw", "--tasks", "rte,sts-b", "--seeds", "1", "--workers", "2",
                           "--copy-to", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert {"data", "pretrain/pkt-adamw", "zeroshot/pkt-adamw", "finetune/pkt-adamw/rte/1",
            "finetune/pkt-adamw/sts-b/1"} <= set(cells)
    assert not any(k.startswith(("finetune/pkt-adamw/sst-2", "pretrain/bare")) for k in cells)  # only what was asked
    log = (state / "pool-logs" / "pool.log").read_text()
    # fine-tuning starts only once its row is pre-trained; the longest task first
    assert log.index("pretrain/pkt-adamw: exit 0") < log.index("finetune/pkt-adamw/sts-b/1: started") \
        < log.index("finetune/pkt-adamw/rte/1: started")  # one job per task and seed (--seeds)
    with tarfile.open(out / "pool-logs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"pool.log", "prep.log", "pretrain__pkt-adamw.log", "pkt-adamw.metrics.jsonl",
            "pkt-adamw.summary.json"} <= names
    assert not list(REPO.glob("docs/kt-study-smoke*"))  # workers write no report


class FakeJob(pool.Job):
    """A job with no process: it ends when the test's clock says so."""

    def start(self, env):
        self.t0, self.proc = clock.now, True

    def poll(self):
        if self.rc is None and self.name in ends and clock.now >= ends[self.name]:
            self.rc, self.wall = 0, clock.now - self.t0
        return self.rc is not None

    def stop(self):
        if self.rc is None:
            self.stopped = clock.now


class clock:  # noqa: N801  (a stand-in for the time module)
    now = 1000.0

    @staticmethod
    def time():
        return clock.now

    @staticmethod
    def sleep(s):
        clock.now += s


ends: dict[str, float] = {}


def test_deadline_stops_the_last_listed_late_row_so_the_first_rows_finish(tmp_path, monkeypatch):
    """Three rows share one GPU: together they would all miss the deadline, alone the first one makes it. The pool
    stops the third, then the second, never the first; their fine-tuning never starts; everything still running
    at the deadline is stopped."""
    monkeypatch.setattr(pool, "time", clock)
    clock.now, ends.clear()
    jobs = [FakeJob(j.name, j.args, tmp_path, j.after) for j in pool.plan([], ["a", "b", "c"], ["rte"], tmp_path, None)]
    share: dict[str, float] = {}
    start, last = clock.now, [clock.now]

    def progress(job):
        """1.2 % of a row per second in all, shared by the rows training (each after 5 s of start-up)."""
        if not job.name.startswith("pretrain/"):
            return None
        dt, last[0] = clock.now - last[0], clock.now
        running = [j for j in jobs if j.name.startswith("pretrain/") and j.proc and j.rc is None
                   and not hasattr(j, "stopped") and clock.now - j.t0 > 5]
        for j in running:
            share[j.name] = share.get(j.name, 0.0) + dt * 0.012 / len(running)
            if share[j.name] >= 1:
                ends.setdefault(j.name, clock.now)
        return min(1.0, share.get(job.name, 0.0))

    ends["prep"] = start + 10
    said = []
    failed = pool.run_pool(jobs, 6, 180, said.append, lambda: None, progress)
    stops = [s for s in said if "give its GPU share" in s]
    assert [s.split(":")[0] for s in stops] == ["pretrain/c", "pretrain/b"]
    assert "pretrain/a: exit 0" in "\n".join(said)
    assert not any(s.startswith(("finetune/b", "finetune/c")) for s in said)
    assert failed == sum(1 for j in jobs if j.rc != 0)


def test_pack_rounds_the_teacher_to_fp16_and_measures_what_that_changes(tmp_path, monkeypatch, data_dir):
    """--pack: the teacher folder with fp16 weights (every other file as it was), pack.json with the zero-shot
    STS-B of both, and the data the study reads, in one archive."""
    import torch

    from mobilebert.checkpoint import save_pretrained
    from mobilebert.model import MobileBertModel
    from mobilebert.presets import get_config

    teacher, root = tmp_path / "teacher", tmp_path / "data"
    torch.manual_seed(0)
    save_pretrained(MobileBertModel(get_config("debug-bert")), teacher)
    (teacher / "vocab.txt").write_text((data_dir / "bert-base-uncased" / "vocab.txt").read_text())
    for part in ("corpus", "glue/SST-2", "glue/MRPC", "glue/RTE", "bert-base-uncased"):
        (root / part).mkdir(parents=True)
    (root / "corpus" / "a.txt").write_text("One sentence.\nAnother one.\n")
    (root / "bert-base-uncased" / "vocab.txt").write_text((teacher / "vocab.txt").read_text())
    (root / "glue" / "STS-B").mkdir(parents=True)
    (root / "glue" / "STS-B" / "dev.tsv").write_text((data_dir / "glue" / "STS-B" / "dev.tsv").read_text())
    monkeypatch.setenv("MOBILEBERT_MINILM", str(teacher))
    monkeypatch.setenv("MOBILEBERT_DATA", str(root))
    record = pool.pack(tmp_path / "pack")
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "pack" / "teacher" / "model.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert (tmp_path / "pack" / "teacher" / "config.json").read_text() == (teacher / "config.json").read_text()
    z = record["teacher_zero_shot_sts_b"]
    assert abs(z["fp32"] - z["fp16-rounded"]) < 1e-2 and 0 < record["max_relative_weight_error"] < 1e-3
    assert json.loads((tmp_path / "pack" / "pack.json").read_text()) == record
    with tarfile.open(tmp_path / "pack" / "data.tar.xz") as tar:
        names = set(tar.getnames())
    assert {"corpus/a.txt", "bert-base-uncased/vocab.txt", "glue/STS-B/dev.tsv"} <= names


def test_device_and_teacher_folder_reach_every_command(tmp_path, monkeypatch):
    """--device cuda: pre-training's base settings and every fine-tuning command run there, in fp32 (the CPU
    study's arithmetic); MOBILEBERT_MINILM names the teacher where the package cannot be installed."""
    import argparse
    import importlib

    import kt_study

    rows = importlib.import_module("kt_study_rows")
    monkeypatch.setenv("MOBILEBERT_MINILM", str(tmp_path / "minilm"))
    with pytest.raises(SystemExit, match=r"MOBILEBERT_MINILM=.*minilm: no config.json there"):
        rows.minilm_dir()  # a wrong folder is named before any run starts
    (tmp_path / "minilm").mkdir()
    (tmp_path / "minilm" / "config.json").write_text("{}")
    assert rows.minilm_dir() == tmp_path / "minilm"
    s = kt_study.Study(argparse.Namespace(smoke=True, state=str(tmp_path / "s"), device="cuda"))
    assert "device: cuda" in s.base_config().read_text()
    seen = []
    monkeypatch.setattr(kt_study, "cli", lambda args: seen.append(args) or (_ for _ in ()).throw(RuntimeError))
    monkeypatch.setattr(s, "model_dir", lambda row: tmp_path / "m")
    with pytest.raises(RuntimeError):
        s.finetune("bare", "rte", 1)
    assert "train.device=cuda" in seen[0] and "train.precision=fp32" in seen[0]


def test_cells_name_the_commit_without_git(monkeypatch):
    import kt_study_cells as cells

    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(cells.subprocess, "run", no_git)
    monkeypatch.setenv("KT_COMMIT", "abc1234")
    assert cells.environment()["commit"] == "abc1234"
