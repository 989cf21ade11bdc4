"""Fine-tuning end to end with the tiny `debug-mobilebert` preset: every local GLUE task, the MNLI layout,
a custom CSV task and SQuAD v1.1/v2.0; outputs checked against independent recomputation (sklearn,
scipy, `mobilebert score`). Also evaluate, predict, distillation, head checks and the sweep."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from safetensors.torch import load_file

from mobilebert.cli import main
from mobilebert.engine.logging import read_metrics
from mobilebert.recipes.finetune import make_loss_fn
from mobilebert.recipes.finetune_settings import DistillSettings
from mobilebert.tasks.glue import get_task, read_examples

from helpers import squad_json

QUICK = ["train.batch_size=16", "train.max_steps=2", "train.log_every=1", "train.progress=false",
         "data.max_train_examples=32", "data.max_eval_examples=24", "data.max_seq_length=32", "optim.lr=1e-3"]


def _ft(capsys, out, *overrides):
    rc = main(["finetune", f"out={out}", *QUICK, *overrides])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def vocab(data_dir):
    return str(data_dir / "bert-base-uncased" / "vocab.txt")


@pytest.fixture(scope="module")
def rte_run(tmp_path_factory, data_dir, vocab):
    out = tmp_path_factory.mktemp("rte")
    rc = main(["finetune", f"out={out}", *QUICK, "data.task=rte", f"data.dir={data_dir / 'glue'}",
               f"model.tokenizer={vocab}"])
    assert rc == 0
    return out


@pytest.mark.parametrize("name, extra", [("CoLA", ()), ("SST-2", ()), ("MRPC", ()), ("STS-B", ()),
                                         ("WNLI", ("train.precision=bf16", "train.grad_accum=2"))])
def test_glue_tasks_outputs_agree_with_sklearn(tmp_path, capsys, data_dir, vocab, name, extra):
    res = _ft(capsys, tmp_path, f"data.task={name}", f"data.dir={data_dir / 'glue'}", f"model.tokenizer={vocab}",
              *extra)
    assert res["precision"] == ("bf16" if extra else "fp32") and res["interrupted"] is None
    _check_glue_run(tmp_path, res, get_task(name), data_dir / "glue" / get_task(name).dir_name)


def test_rte_run_outputs(rte_run, data_dir):
    _check_glue_run(rte_run, json.loads((rte_run / "results.json").read_text()), get_task("rte"),
                    data_dir / "glue" / "RTE")


def _check_glue_run(out, res, task, folder):
    assert res["steps"] == 2 and res["train_examples"] == 32 and res["best_step"] in (1, 2)
    assert res["skipped_rows"] == {"train": 0, "dev": 0} and np.isfinite(res["final_loss"])
    for f in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "settings.yaml", "task.json"):
        assert (out / "best" / f).is_file()
    cfg = json.loads((out / "best" / "config.json").read_text())
    assert cfg["architectures"] == ["MobileBertForSequenceClassification"] and len(cfg["id2label"]) == task.num_labels
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert any(f"eval_{task.main_metric}" in r for r in records) and any((out / "tensorboard").iterdir())
    # Recompute the dev metric from the written predictions with sklearn/scipy.
    gold = read_examples(task, folder / "dev.tsv", "dev").examples[:24]
    lines = (out / "dev_predictions" / "dev.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and [ln.split("\t")[0] for ln in lines[1:]] == [e.guid for e in gold]
    preds = [ln.split("\t")[1] for ln in lines[1:]]
    if task.is_regression:
        p, y = [float(x) for x in preds], [e.label for e in gold]
        assert res["best"]["pearson"] == pytest.approx(stats.pearsonr(p, y)[0], abs=1e-9)
        assert res["best"]["spearmanr"] == pytest.approx(stats.spearmanr(p, y)[0], abs=1e-9)
    else:
        y = [e.label for e in gold]
        expected = {"accuracy": skm.accuracy_score, "matthews_correlation": skm.matthews_corrcoef,
                    "f1": lambda a, b: skm.f1_score(a, b, pos_label=task.positive_label)}
        for k in task.metrics:
            assert res["best"][k] == pytest.approx(expected[k](y, preds), abs=1e-12)
    # Test-set predictions in the GLUE submission format, for the first 24 test rows.
    sub = out / "submission" / f"{task.test_files[0][2]}.tsv"
    assert res["test_files"] == [str(sub)]
    rows = [ln.split("\t") for ln in sub.read_text().splitlines()]
    assert rows[0] == ["index", "prediction"] and [r[0] for r in rows[1:]] == [str(i) for i in range(24)]
    assert all((float(r[1]) is not None) if task.is_regression else r[1] in task.labels for r in rows[1:])


MNLI_HEAD = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2")


def test_mnli_layout_two_dev_sets_and_two_submissions(tmp_path, capsys, vocab):
    root = tmp_path / "glue" / "MNLI"
    root.mkdir(parents=True)
    labels = ["contradiction", "entailment", "neutral"]
    p = "( x )\t( y )\t(ROOT x)\t(ROOT y)"
    rows = [f"{i}\t1\t1e\tgov\t{p}\tThe cat sat number {i}.\tA cat {i % 3}.\t{labels[i % 3]}\t{labels[i % 3]}"
            for i in range(20)]
    (root / "train.tsv").write_text("\n".join([MNLI_HEAD + "\tlabel1\tgold_label"] + rows) + "\n")
    for split in ("matched", "mismatched"):
        dev = [f"{i}\t1\t1\tgov\t{p}\tS{i}.\tT{i}.\tx\tx\tx\tx\tx\t{labels[(i + len(split)) % 3]}" for i in range(6)]
        (root / f"dev_{split}.tsv").write_text("\n".join([MNLI_HEAD + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5"
                                                          "\tgold_label"] + dev) + "\n")
        (root / f"test_{split}.tsv").write_text("\n".join([MNLI_HEAD] + [f"{i}\t1\t1\tgov\t{p}\tU.\tV."
                                                                         for i in range(4)]) + "\n")
    res = _ft(capsys, tmp_path / "run", "data.task=mnli", f"data.dir={tmp_path / 'glue'}", f"model.tokenizer={vocab}")
    assert set(res["best"]) == {"accuracy", "total", "dev_mismatched_accuracy", "dev_mismatched_total"}
    assert sorted(p.rsplit("/", 1)[1] for p in res["test_files"]) == ["MNLI-m.tsv", "MNLI-mm.tsv"]
    assert sorted(f.name for f in (tmp_path / "run" / "dev_predictions").iterdir()) == ["dev_matched.tsv",
                                                                                        "dev_mismatched.tsv"]


def test_custom_csv_task(tmp_path, capsys, vocab):
    texts = ['"dull, boring film"', "great fun film"]   # a quoted comma stays inside the field
    rows = ["id,review,stars"] + [f"r{i},{texts[i % 2]} {i},{('neg', 'pos')[i % 2]}" for i in range(20)]
    rows.insert(5, "r99,unquoted, comma,pos")   # a bad row: skipped (data.on_bad_row defaults to skip) and counted
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        res = _ft(capsys, tmp_path / "run", "data.task=custom", f"data.train_file={tmp_path / 'train.csv'}",
                  f"data.dev_file={tmp_path / 'train.csv'}", "data.text_a=review", "data.label=stars",
                  "data.id_column=id", f"model.tokenizer={vocab}")
    assert res["task"] == "custom" and set(res["best"]) == {"accuracy", "f1", "total"}
    assert res["skipped_rows"] == {"train": 1, "dev": 1} and res["train_examples"] == 20
    cfg = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "neg", "1": "pos"}
    assert (tmp_path / "run" / "dev_predictions" / "dev.tsv").read_text().splitlines()[1].startswith("r0\t")


@pytest.mark.parametrize("version", ["1.1", "v2.0"])
def test_squad_run_and_official_scoring(tmp_path, capsys, vocab, version):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad_json(version)))
    res = _ft(capsys, tmp_path / "run", "data.task=squad", f"data.train_file={path}", f"data.dev_file={path}",
              f"data.test_file={path}", f"model.tokenizer={vocab}", "data.max_seq_length=64", "data.doc_stride=24",
              "data.max_query_length=16", "train.batch_size=8")
    preds_dir = tmp_path / "run" / "dev_predictions"
    preds = json.loads((preds_dir / "predictions.json").read_text())
    assert set(preds) == {"q1", "q2", "q3"} | ({"q4"} if version == "v2.0" else set())
    argv = ["score", "squad", str(path), str(preds_dir / "predictions.json")]
    if version == "v2.0":
        argv += ["--na-probs", str(preds_dir / "null_odds.json")]
    assert main(argv) == 0
    scored = json.loads(capsys.readouterr().out)
    best = dict(res["best"])
    best.pop("total") if version == "1.1" else None
    assert scored == pytest.approx(best)
    assert (tmp_path / "run" / "submission" / "predictions.json").is_file()
    # predict on a question typed on the command line.
    assert main(["predict", str(tmp_path / "run" / "best"), "--question", "Who won?",
                 "--context", "The Denver Broncos won the game."]) == 0
    answer, prob = capsys.readouterr().out.rstrip("\n").rsplit("\t", 1)
    assert 0.0 <= float(prob) <= 1.0 and (answer == "(no answer)" or answer in "The Denver Broncos won the game.")


def test_evaluate_matches_training_and_score(rte_run, tmp_path, capsys, data_dir):
    best = json.loads((rte_run / "results.json").read_text())["best"]
    assert main(["evaluate", str(rte_run / "best"), "--out", str(tmp_path / "ev"), "--test"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accuracy"] == pytest.approx(best["accuracy"]) and res["total"] == 24
    assert (tmp_path / "ev" / "test" / "RTE.tsv").is_file()
    # The full dev set through `evaluate`, then re-scored by `score glue`.
    assert main(["evaluate", str(rte_run / "best"), "data.max_eval_examples=0", "--out", str(tmp_path / "full")]) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(["score", "glue", "RTE", str(data_dir / "glue/RTE/dev.tsv"), str(tmp_path / "full/dev/dev.tsv")]) == 0
    assert json.loads(capsys.readouterr().out) == {"accuracy": pytest.approx(full["accuracy"]), "total": 277}


def test_predict_sentence_pair_and_file(rte_run, tmp_path, capsys):
    assert main(["predict", str(rte_run / "best"), "A man is here.", "Nobody is here."]) == 0
    label, prob = capsys.readouterr().out.split()
    assert label in ("entailment", "not_entailment") and 0.5 <= float(prob) <= 1.0
    inputs = tmp_path / "in.tsv"
    inputs.write_text("A dog runs.\tAn animal moves.\n\nIt rains.\tThe sun shines.\n")
    assert main(["predict", str(rte_run / "best"), "--file", str(inputs), "--out", str(tmp_path / "o.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 3] and all(r["label"] in ("entailment", "not_entailment") for r in rows)
    assert main(["predict", str(rte_run / "best"), "Only one sentence."]) == 2
    assert "fine-tuned on sentence pairs (rte); give two sentences" in capsys.readouterr().err
    inputs.write_text("one\ttwo\tthree\n")
    assert main(["predict", str(rte_run / "best"), "--file", str(inputs)]) == 2
    assert "in.tsv:1: has 3 tab-separated fields" in capsys.readouterr().err


def test_predict_on_exported_models(rte_run, tmp_path, capsys):
    """`predict` runs the ONNX export (fp32 and int8) and agrees with the PyTorch checkpoint."""
    pytest.importorskip("onnxruntime")
    pair = ["A man is here.", "Nobody is here."]
    assert main(["predict", str(rte_run / "best"), *pair]) == 0
    want_label, want_prob = capsys.readouterr().out.split()
    assert main(["export", "onnx", str(rte_run / "best"), "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m.onnx"), *pair]) == 0
    label, prob = capsys.readouterr().out.split()
    assert label == want_label and abs(float(prob) - float(want_prob)) < 1e-4
    inputs = tmp_path / "in.tsv"
    inputs.write_text("A dog runs.\tAn animal moves.\nIt rains.\tThe sun shines.\n")
    assert main(["predict", str(tmp_path / "m.onnx"), "--file", str(inputs), "--out", str(tmp_path / "o.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["label"] in ("entailment", "not_entailment") for r in rows)


def test_qat_option(tmp_path, capsys, data_dir, vocab):
    """`model.qat=true` fine-tunes with fake quantization (relu6 + NoNorm only; anything else is refused)."""
    from mobilebert import MobileBertForSequenceClassification, get_config

    init = tmp_path / "relu6"
    MobileBertForSequenceClassification(get_config("debug-mobilebert", hidden_act="relu6")).save_pretrained(init)
    res = _ft(capsys, tmp_path / "run", "data.task=sst-2", f"data.dir={data_dir / 'glue'}", f"model.tokenizer={vocab}",
              f"model.init={init}", "model.qat=true")
    assert np.isfinite(res["final_loss"]) and res["steps"] == 2
    assert main(["finetune", f"out={tmp_path / 'bad'}", *QUICK, "data.task=sst-2", f"data.dir={data_dir / 'glue'}",
                 f"model.tokenizer={vocab}", "model.qat=true"]) == 2
    assert "relu6" in capsys.readouterr().err


def test_wrong_head_is_a_clear_error(rte_run, tmp_path, capsys, data_dir):
    for task, message in (("sst-2", "its labels ['entailment', 'not_entailment'] differ from task SST-2's"),
                          ("sts-b", "its classifier has 2 output(s) but task STS-B needs 1")):
        rc = main(["finetune", f"out={tmp_path / 'run'}", "data.task=" + task, f"data.dir={data_dir / 'glue'}",
                   f"model.init={rte_run / 'best'}", *QUICK])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1
        assert not (tmp_path / "run").exists()  # refused before anything is written
    assert main(["evaluate", str(rte_run / "best"), "data.task=cola", f"data.dir={data_dir / 'glue'}"]) == 2
    assert "differ from task CoLA's" in capsys.readouterr().err
    assert main(["finetune", f"out={tmp_path}", "data.task=rte", "model.init=debug-mobilebert"]) == 2
    assert "model.tokenizer" in capsys.readouterr().err


def test_mean_pooling_option(tmp_path, capsys, data_dir, vocab):
    """model.pooling=mean: the run says what it means, the checkpoint keeps it, `evaluate` reproduces the dev
    score from it; a QA task (no pooler) is refused before anything is written."""
    glue = f"data.dir={data_dir / 'glue'}"
    rc = main(["finetune", f"out={tmp_path / 'run'}", *QUICK, "data.task=sts-b", glue, f"model.tokenizer={vocab}",
               "model.pooling=mean"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "model.pooling=mean: the classifier reads the mean of the last-layer states" in captured.out
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    cfg = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert cfg["classifier_pooling"] == "mean"
    assert main(["evaluate", str(tmp_path / "run" / "best")]) == 0
    assert json.loads(capsys.readouterr().out)["spearmanr"] == pytest.approx(res["best"]["spearmanr"])
    assert main(["evaluate", str(tmp_path / "run" / "best"), "model.pooling=cls"]) == 2  # not silently ignored
    assert "trained on mean pooling" in capsys.readouterr().err
    train = tmp_path / "train.json"
    train.write_text(json.dumps(squad_json()))
    rc = main(["finetune", f"out={tmp_path / 'qa'}", *QUICK, "data.task=squad", f"data.train_file={train}",
               f"model.tokenizer={vocab}", "data.max_seq_length=64", "data.max_query_length=16",
               "model.pooling=mean"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.pooling:" in err and err.count("\n") == 1 and not (tmp_path / "qa").exists()
    assert main(["finetune", f"out={tmp_path / 'bad'}", "model.pooling=max"]) == 2
    assert "model.pooling" in capsys.readouterr().err


def test_siamese_pooling_option(tmp_path, capsys, data_dir, vocab):
    """model.pooling=siamese: the run says what it means, a new regression head starts at the training scores'
    range (cosine 0 -> 0, 1 -> 5 on the whole STS-B training set), the checkpoint keeps the pooling, `evaluate` reproduces the dev score
    from it, and it exports to ONNX and quantizes through ONNX Runtime."""
    rc = main(["finetune", f"out={tmp_path / 'run'}", *QUICK, "data.task=sts-b", f"data.dir={data_dir / 'glue'}",
               f"model.tokenizer={vocab}", "model.pooling=siamese", "optim.lr=1e-9", "data.max_train_examples=0"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "model.pooling=siamese: each sentence of a pair is encoded alone" in captured.out
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    best = tmp_path / "run" / "best"
    assert json.loads((best / "config.json").read_text())["classifier_pooling"] == "siamese"
    state = load_file(best / "model.safetensors")
    head = [k for k in state if k.endswith("classifier.weight")][0]
    assert state[head].item() == pytest.approx(5.0, abs=1e-3)  # lr 1e-9: still where fit_cosine_range put it
    assert state[head.replace("weight", "bias")].item() == pytest.approx(0.0, abs=1e-3)
    assert main(["evaluate", str(best)]) == 0
    assert json.loads(capsys.readouterr().out)["spearmanr"] == pytest.approx(res["best"]["spearmanr"])
    # the ONNX export splits the pair inside the graph (parity checked on export); int8 through ONNX Runtime too
    assert main(["export", "onnx", str(best), "--out", str(tmp_path / "m.onnx")]) == 0, capsys.readouterr().err
    assert (tmp_path / "m.onnx").is_file()
    rc = main(["finetune", f"out={tmp_path / 'mrpc'}", *QUICK, "data.task=mrpc", f"data.dir={data_dir / 'glue'}",
               f"model.tokenizer={vocab}", "model.pooling=siamese"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "mrpc" / "best"), "--task", "mrpc", "--data", str(data_dir / "glue"),
                 "--out", str(tmp_path / "q.onnx"), "--eval-samples", "64", "--warn-only"]) == 0
    captured = capsys.readouterr()
    assert "scoring fp32" in captured.out and (tmp_path / "q.onnx").is_file(), captured.out + captured.err
    # the regression head (cos(u, v)) as well: scored on Spearman
    assert main(["quantize", str(best), "--task", "sts-b", "--data", str(data_dir / "glue"), "--out",
                 str(tmp_path / "q-stsb.onnx"), "--eval-samples", "64", "--warn-only"]) == 0
    assert "| spearmanr |" in capsys.readouterr().out and (tmp_path / "q-stsb.onnx").is_file()
    if importlib.util.find_spec("executorch"):  # the mobile runtime as well (an optional extra)
        assert main(["export", "executorch", str(best), "--out", str(tmp_path / "m.pte"), "--max-seq", "64",
                     "--int8", "--fuse"]) == 0, capsys.readouterr().err
        assert (tmp_path / "m.pte").is_file()


def test_distillation_from_teacher(rte_run, tmp_path, capsys, data_dir, vocab):
    res = _ft(capsys, tmp_path, "data.task=rte", f"data.dir={data_dir / 'glue'}", f"model.tokenizer={vocab}",
              f"distill.teacher={rte_run / 'best'}", "distill.temperature=2", "distill.alpha=0.7",
              "data.predict_test=false")
    recs = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "soft_loss" in r]
    assert len(recs) == 2
    for r in recs:   # the logged loss is the alpha-mix of the two parts
        assert r["loss"] == pytest.approx(0.7 * r["soft_loss"] + 0.3 * r["hard_loss"], rel=1e-5)
    assert "test_files" not in res


def test_distillation_loss_formula():
    class Toy(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(w))

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
            logits = input_ids.float() * self.w
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return type("O", (), {"logits": logits, "loss": loss})()

    batch = {"input_ids": torch.tensor([[1, 2, 3], [3, 1, 0]]), "attention_mask": None, "token_type_ids": None,
             "labels": torch.tensor([2, 0])}
    student, teacher = Toy([0.5, 1.0, -1.0]), Toy([1.0, 0.2, 0.3])
    loss, logs = make_loss_fn("glue", False, teacher, DistillSettings(teacher="t", temperature=3.0, alpha=0.25))(
        student, batch)
    s, t = student(**batch).logits / 3, teacher(**batch).logits / 3
    kl = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1).mean() * 9
    assert logs["soft_loss"].item() == pytest.approx(kl.item(), rel=1e-6)
    assert loss.item() == pytest.approx(0.25 * kl.item() + 0.75 * logs["hard_loss"].item(), rel=1e-6)
    same, _ = make_loss_fn("glue", False, student, DistillSettings(teacher="t", alpha=1.0))(student, batch)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_sweep_table_and_plot(tmp_path, capsys, data_dir, vocab):
    base = ["data.task=wnli", f"data.dir={data_dir / 'glue'}", f"model.tokenizer={vocab}", "data.max_train_examples=16",
            "data.max_eval_examples=16", "data.max_seq_length=24", "train.progress=false"]
    argv = ["sweep", *base, "--out", str(tmp_path), "--batch-sizes", "16", "--lrs", "1e-4,1e-3", "--epochs", "1",
            "--seeds", "1,2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    recs = [json.loads(x) for x in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and {r["run"] for r in recs} == {f"bs16_lr{lr}_ep1_seed{s}" for lr in ("0.0001", "0.001")
                                                         for s in (1, 2)}
    for lr in (1e-4, 1e-3):
        scores = [r["score"] for r in recs if r["lr"] == lr]
        assert f"| 16 | {lr:g} | 1 | {np.mean(scores):.4f} ± {np.std(scores, ddof=1):.4f} | 2 |" in out
    assert "best: batch 16" in out and (tmp_path / "sweep.png").stat().st_size > 0
    assert not (tmp_path / "runs" / "bs16_lr0.001_ep1_seed1" / "best").exists()   # no checkpoints kept
    assert main(argv) == 0   # a re-run finds every run done and only re-reports
    assert "[1/4]" not in capsys.readouterr().out


def test_resume_after_sigterm_is_bit_exact(tmp_path, capsys, monkeypatch, data_dir, vocab):
    """SIGTERM at step 3 of 6 saves a checkpoint and exits 130; --resume finishes with the same weights, loss
    and dev metrics as an uninterrupted run. A folder holding an interrupted run needs --resume."""
    import os
    import signal

    import mobilebert.engine as engine
    from safetensors.torch import load_file

    args = ["data.task=mrpc", f"data.dir={data_dir / 'glue'}", f"model.tokenizer={vocab}", "train.max_steps=6",
            "train.eval_every=2", "model.dropout=0.1"]  # dropout on: the RNG stream must be restored too
    full = _ft(capsys, tmp_path / "full", *args)
    real_loop = engine.train_loop

    def loop_killed_at_3(*a, **kw):
        kw["on_step_end"] = lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 3 else None
        return real_loop(*a, **kw)

    out = tmp_path / "cut"
    monkeypatch.setattr(engine, "train_loop", loop_killed_at_3)
    assert main(["finetune", f"out={out}", *QUICK, *args]) == 130
    monkeypatch.setattr(engine, "train_loop", real_loop)
    assert (out / "checkpoints" / "latest").read_text().strip() == "finetune-step-0000003"
    assert main(["finetune", f"out={out}", *QUICK, *args]) == 2  # no --resume: refused, nothing touched
    assert "--resume" in capsys.readouterr().err
    assert main(["finetune", f"out={out}", *QUICK, *args, "optim.lr=2e-3", "--resume"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main(["finetune", f"out={out}", *QUICK, *args, "--resume"]) == 0
    cut = json.loads((out / "results.json").read_text())
    assert cut["final_loss"] == full["final_loss"] and cut["best"] == full["best"]
    assert [h["step"] for h in cut["history"]] == [2, 4, 6]
    a, b = load_file(tmp_path / "full" / "best" / "model.safetensors"), load_file(out / "best" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "checkpoints").exists()  # finished runs keep best/ only
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps))  # the resumed log continues, no duplicated steps
    assert main(["finetune", f"out={out}", *QUICK, *args, "--resume"]) == 2  # finished: nothing to resume
    assert "holds a finished fine-tuning run (results.json)" in capsys.readouterr().err
    assert main(["finetune", f"out={tmp_path / 'none'}", *QUICK, *args, "--resume"]) == 2
    assert "no settings.yaml" in capsys.readouterr().err and not (tmp_path / "none").exists()


@pytest.mark.slow
def test_compile_gives_the_same_losses(tmp_path, capsys, data_dir, vocab):
    """train.compile=true (torch.compile with dynamic shapes): the eager run's losses. Slow on CPU (compilation)."""
    args = ["data.task=mrpc", f"data.dir={data_dir / 'glue'}", f"model.tokenizer={vocab}", "train.max_steps=4",
            "model.dropout=0", "model.classifier_dropout=0"]
    runs = {}
    for flag in ("false", "true"):
        _ft(capsys, tmp_path / flag, *args, f"train.compile={flag}")
        runs[flag] = [r["loss"] for r in read_metrics(tmp_path / flag / "metrics.jsonl") if "loss" in r]
    assert len(runs["false"]) == 4
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-4)
