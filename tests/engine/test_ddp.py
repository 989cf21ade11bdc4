"""Data parallelism: 2 processes (torchrun, gloo on CPU) give the losses of 1 process at the same global batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mobilebert.data import prepare
from mobilebert.engine.logging import read_metrics

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny-test.yaml"
# Dropout off in the teacher so both runs compute the same function (ranks draw different dropout masks).
OVERRIDES = ["teacher.overrides={num_hidden_layers: 2, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
             "student.overrides={num_hidden_layers: 2}", "data.seq_len=32", "data.max_predictions=5",
             "teacher.train.steps=6", "teacher.train.batch_size=8", "kt.steps=8", "kt.batch_size=8", "pd.steps=6",
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


def test_finetune_two_processes_match_one(tmp_path, data_dir):
    """`torchrun -m mobilebert finetune`: 2 ranks x 2 micro-batches of 4 = 1 process with batches of 16."""
    vocab = data_dir / "bert-base-uncased" / "vocab.txt"
    common = ["finetune", "data.task=mrpc", f"data.dir={data_dir / 'glue'}", f"model.tokenizer={vocab}",
              "data.max_train_examples=32", "data.max_eval_examples=24", "data.max_seq_length=32",
              "train.batch_size=16", "train.max_steps=4", "train.log_every=1", "train.progress=false",
              "optim.lr=1e-3", "model.dropout=0", "model.classifier_dropout=0", "data.predict_test=false"]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = subprocess.run([sys.executable, "-m", "mobilebert", *common, f"out={one}"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                         "-m", "mobilebert", *common, f"out={two}", "train.grad_accum=2"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
    assert p2.returncode == 0, p2.stderr[-3000:]
    a = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(one / "metrics.jsonl") if "loss" in r]
    b = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(two / "metrics.jsonl") if "loss" in r]
    assert [x[0] for x in a] == [x[0] for x in b] == [1, 2, 3, 4]  # rank 0 alone logs
    for (step, la, ga), (_, lb, gb) in zip(a, b):
        assert lb == pytest.approx(la, rel=2e-4, abs=1e-5), f"step {step} loss"
        assert gb == pytest.approx(ga, rel=2e-4, abs=1e-5), f"step {step} grad_norm"
    assert p2.stdout.count('"best_step"') == 1  # one report, from rank 0
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert ra["steps"] == rb["steps"] == 4 and (two / "best" / "model.safetensors").is_file()
    assert rb["best"]["accuracy"] == pytest.approx(ra["best"]["accuracy"], abs=1 / 24 + 1e-9)


def test_prefetch_workers_give_the_same_losses(tmp_path, data_dir):
    """data.workers=2 builds batches ahead in worker processes; every loss and gradient norm is unchanged."""
    shards = tmp_path / "shards"
    prepare([data_dir / "corpus" / "inaugural"], data_dir / "bert-base-uncased" / "vocab.txt", shards, workers=1)
    common = [str(CONFIG), f"data.shards={shards}", "data.corpus=[]", *OVERRIDES]
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        p = subprocess.run([sys.executable, "-m", "mobilebert", "train", *common, "--out", str(out),
                            f"data.workers={workers}"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        runs[workers] = losses(out)
    assert len(runs[0]) == 6 + 4 + 4 + 6 and runs[0] == runs[2]


def test_step_prefetcher_order_and_restart():
    from mobilebert.data.prefetch import StepPrefetcher

    fn = lambda step: {"step": step}  # noqa: E731 (fork start method: no pickling needed)
    p = StepPrefetcher(fn, start=3, stop=10, workers=2, prefetch=2)
    assert [p(s)["step"] for s in (3, 4, 5)] == [3, 4, 5]
    assert p(8)["step"] == 8 and p(9)["step"] == 9  # a jump restarts the workers at that step
    assert p(12)["step"] == 12  # past the planned range: computed in-process
    p.close()


@pytest.mark.slow
def test_compile_gives_the_same_losses(tmp_path, data_dir):
    """run.compile=true (torch.compile of the trained forward and the teacher): the losses of eager mode.
    Slow on CPU (about a minute of compilation); what it is for is GPU speed."""
    shards = tmp_path / "shards"
    prepare([data_dir / "corpus" / "inaugural"], data_dir / "bert-base-uncased" / "vocab.txt", shards, workers=1)
    common = [str(CONFIG), f"data.shards={shards}", "data.corpus=[]", *OVERRIDES]
    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        p = subprocess.run([sys.executable, "-m", "mobilebert", "train", *common, "--out", str(out),
                            f"run.compile={flag}"], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        runs[flag] = losses(out)
    assert [x[:2] for x in runs["false"]] == [x[:2] for x in runs["true"]]
    for (stage, step, x), (_, _, y) in zip(runs["false"], runs["true"]):
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-5), f"{stage} step {step} {k}"
