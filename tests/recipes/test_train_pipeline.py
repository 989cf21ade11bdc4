"""`mobilebert train` end to end on CPU (tiny IB-BERT teacher -> 4 PKT stages -> PD), what each stage may
touch, and the bad inputs that must fail before anything is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mobilebert import get_config
from mobilebert.cli import main as cli_main
from mobilebert.distill import steps as S
from mobilebert.distill import transfer as T
from mobilebert.recipes.train_settings import KtSettings
from mobilebert.engine.logging import read_metrics
from mobilebert.engine.loop import LoopConfig, train_loop
from mobilebert.engine.optim import build_optimizer
from mobilebert.heads import MobileBertForPreTraining

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny-test.yaml"


def data_args(data_dir: Path, corpus: str = "corpus/inaugural") -> list[str]:
    return [f"data.corpus=[{data_dir / corpus}]", f"data.vocab={data_dir / 'bert-base-uncased' / 'vocab.txt'}"]


def stage_losses(run: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in read_metrics(run / "metrics.jsonl"):
        if "step" in r and "loss" in r:
            out.setdefault(r["stage"], []).append(r["loss"])
    return out


# ------------------------------------------------------------------------------------- the whole run
def test_tiny_pipeline_end_to_end(tmp_path, data_dir):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mobilebert", "train", str(CONFIG), "--out", str(run),
                           *data_args(data_dir)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resolved settings" in proc.stdout and "cost estimate" in proc.stdout
    losses = stage_losses(run)
    assert list(losses) == ["teacher", "pkt-1", "pkt-2", "pkt-3", "pkt-4", "pd"]
    for stage, values in losses.items():
        assert values[-1] < values[0], f"{stage}: loss did not fall {values}"
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["eval"]) == {"teacher", "student"} and (run / "loss_curves.png").is_file()
    assert (run / "tensorboard").exists() is False  # run.tensorboard=false in tiny-test.yaml

    transformers = pytest.importorskip("transformers")
    hf = transformers.MobileBertForPreTraining.from_pretrained(run / "student").eval()
    ours = MobileBertForPreTraining.from_pretrained(run / "student").eval()
    ids = torch.randint(1000, 3000, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).prediction_logits, ours(ids).prediction_logits, rtol=1e-4, atol=1e-4)
    assert (run / "student" / "vocab.txt").is_file()


# --------------------------------------------------------------------- what a stage may and may not train
def _tiny_pair():
    torch.manual_seed(0)
    teacher = MobileBertForPreTraining(get_config("debug-ibbert", vocab_size=120)).eval()
    student = MobileBertForPreTraining(get_config("debug-mobilebert", vocab_size=120))
    return T.freeze(teacher), student


def _batch(n=4, s=10):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 120, (n, s), generator=g)
    mask = torch.ones(n, s, dtype=torch.long)
    mask[:, -3:] = 0
    labels = torch.full((n, s), -100)
    labels[:, 2:4] = ids[:, 2:4]
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask, "labels": labels,
            "next_sentence_label": torch.tensor([0, 1] * (n // 2))}


def test_copy_from_teacher_copies_embeddings_and_heads_not_norm_of_other_kind():
    teacher, student = _tiny_pair()
    copied = T.copy_from_teacher(teacher, student)
    assert "mobilebert.embeddings.word_embeddings.weight" in copied and "cls.seq_relationship.weight" in copied
    assert "mobilebert.embeddings.LayerNorm.weight" not in copied  # LayerNorm (teacher) vs NoNorm (student)
    assert not any(".encoder." in n for n in copied)
    ts, ss = teacher.state_dict(), student.state_dict()
    for name in copied:
        assert torch.equal(ts[name], ss[name]), name


@pytest.mark.parametrize("lower", ["freeze", "reduced_lr"])
def test_pkt_stage_trains_only_its_layer(lower):
    teacher, student = _tiny_pair()
    T.copy_from_teacher(teacher, student)
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    scale = T.stage_plan("pkt", 4, layer=2, lower_layers=lower)
    T.apply_plan(student, scale)
    opt = build_optimizer(student, "lamb", 1e-2, lr_scale=scale)
    loss = S.TransferLoss(teacher, KtSettings(), layers=[2], num_layers=4, depth=2)
    batch = _batch()
    train_loop(S.Forward(student.eval()), loss, lambda step: batch, opt, None,
               LoopConfig(max_steps=3, progress=False, log_every=1))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before_t[k]), f"teacher changed: {k}"
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before_s[k])}
    assert changed, "nothing trained"
    for k in changed:
        i = T.layer_index(k)
        assert i == 1 or (lower == "reduced_lr" and i == 0), f"{k} changed in PKT stage 2 ({lower})"
    if lower == "reduced_lr":
        assert any(T.layer_index(k) == 0 for k in changed)


def test_pd_and_teacher_stage_gradients():
    teacher, student = _tiny_pair()
    batch = _batch()
    loss_fn = S.DistillationLoss(teacher, alpha=0.5)
    loss, logs = loss_fn(S.Forward(student), batch, S._mlm_nsp_denominators(batch))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert set(logs) == {"mlm", "kd", "nsp", "mlm_acc"}


# --------------------------------------------------------------------------- bad input: fail before writing
def _train(args, capsys) -> tuple[int, str]:
    code = cli_main(["train", *map(str, args)])
    return code, capsys.readouterr().err


def test_empty_corpus(tmp_path, data_dir, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("")
    out = tmp_path / "run"
    code, err = _train([CONFIG, "--out", out, f"data.corpus=[{corpus}]", *data_args(data_dir)[1:]], capsys)
    assert code == 2 and "empty" in err and not out.exists()


def test_binary_file_in_corpus(tmp_path, data_dir, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Some text.\nMore text.\n")
    (corpus / "model.bin").write_bytes(os.urandom(4096))
    out = tmp_path / "run"
    code, err = _train([CONFIG, "--out", out, f"data.corpus=[{corpus}]", *data_args(data_dir)[1:]], capsys)
    assert code == 2 and "model.bin" in err and not out.exists()


# Different widths, depths and groupable head counts are bridged since issue 11 (distill/shapes.py); these are not.
@pytest.mark.parametrize("override, key", [
    ("student.overrides={intra_bottleneck_size: 24, num_attention_heads: 3}", "num_attention_heads"),
    ("student.overrides={num_hidden_layers: 6}", "kt.layer_map"),
    ("kt.layer_map=[1, 3, 2, 4]", "kt.layer_map"),
    ("teacher.overrides={vocab_size: 30000}", "vocab_size"),
])
def test_teacher_student_mismatch(tmp_path, data_dir, capsys, override, key):
    out = tmp_path / "run"
    code, err = _train([CONFIG, "--out", out, override, *data_args(data_dir)], capsys)
    assert code == 2 and key in err and not out.exists(), err


def test_config_typos(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    code, err = _train([CONFIG, "--out", out, "kt.stratgy=jkt", *data_args(data_dir)], capsys)
    assert code == 2 and "kt.stratgy" in err and "strategy" in err and not out.exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("lower_layers:", "lower_layer:"))
    code, err = _train([bad, "--out", out, *data_args(data_dir)], capsys)
    assert code == 2 and "kt.lower_layer" in err and not out.exists()
    code, err = _train([CONFIG, "--out", out, "student.overrides={hiden_size: 3}", *data_args(data_dir)], capsys)
    assert code == 2 and "hiden_size" in err and not out.exists()


def test_out_folder_with_another_run(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "settings.yaml").write_text("run: {}\n")
    (out / "metrics.jsonl").write_text("")
    code, err = _train([CONFIG, "--out", out, *data_args(data_dir)], capsys)
    assert code == 2 and "holds another run" in err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "settings.yaml"]
    code, err = _train([CONFIG, "--out", tmp_path / "nothing", "--resume", *data_args(data_dir)], capsys)
    assert code == 2 and "no run to resume" in err


@pytest.mark.parametrize("kind", ["pkt", "jkt", "akt", "bare", "pd"])
def test_every_strategy_lowers_its_loss_on_a_fixed_batch(kind):
    teacher, student = _tiny_pair()
    T.copy_from_teacher(teacher, student)
    kt = KtSettings()
    # The paper's variants (plain MSE, KL, padding masked). GR's standardised MSE is unstable on random
    # toy models: one LAMB step moves the biases by ~lr, as much as the student's whole 0.03-std feature map.
    kt.at.kind, kt.fmt.mask_padding, kt.fmt.standardize = "kl", True, False
    pd = S.DistillationLoss(teacher, alpha=0.5)
    loss_fn = {"pkt": S.TransferLoss(teacher, kt, [3], 4, depth=3), "jkt": S.TransferLoss(teacher, kt, [1, 2, 3, 4], 4),
               "akt": S.TransferLoss(teacher, kt, [1, 2, 3, 4], 4, pd=pd), "bare": S.MlmNspLoss(), "pd": pd}[kind]
    scale = T.stage_plan(kind, 4, layer=3)
    T.apply_plan(student, scale)
    opt = build_optimizer(student, "lamb", 1e-3, lr_scale=scale)
    batch = _batch()

    class Log:
        losses = []

        def log(self, stage, step, metrics):
            self.losses.append(metrics["loss"])

    log = Log()
    train_loop(S.Forward(student.eval()), loss_fn, lambda step: batch, opt, None,
               LoopConfig(max_steps=12, progress=False, log_every=6), logger=log)
    assert len(log.losses) == 2 and 0 < log.losses[1] < log.losses[0], log.losses
