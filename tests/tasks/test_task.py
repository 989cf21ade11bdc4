"""The task abstraction (`mobilebert.tasks.base.Task`): for each kind of task, examples -> features ->
model outputs -> predictions -> score, on the real shared GLUE files (SQuAD on the shared Super Bowl
fixture), checked against sklearn/scipy and the official SQuAD scoring; and the facts written once:
task-name normalisation, the positive class, the head-versus-task check."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import squad_json
from scipy import stats
from sklearn import metrics as skm

from mobilebert.recipes.finetune_settings import FinetuneDataSettings
from mobilebert.recipes.score import score_glue
from mobilebert.tasks import load_model_for_task
from mobilebert.tasks.base import is_squad, positive_index, task_key
from mobilebert.tasks.data import build_task_data
from mobilebert.tasks.glue import get_task
from mobilebert.tasks.qa import SquadTask
from mobilebert.tasks.sentence import SentenceTask
from mobilebert.tasks.squad import read_squad
from mobilebert.tokenizer import Tokenizer

N = 64   # dev examples per task: enough for every metric, seconds on a CPU


@pytest.fixture(scope="module")
def tok(vocab_file):
    return Tokenizer.from_file(vocab_file)


def _glue(data_dir, tok, name, **kw):
    ds = FinetuneDataSettings(task=name, dir=str(data_dir / "glue"), max_eval_examples=N, max_seq_length=64, **kw)
    return build_task_data(ds, tok, splits=("dev",))


def _logits_out(logits):
    return SimpleNamespace(logits=torch.tensor(np.asarray(logits), dtype=torch.float32))


def test_facts_written_once():
    assert task_key("SST-2") == task_key("sst_2") == task_key("sst2") == "sst2"
    assert is_squad("SQuAD-v2.0") and is_squad("squad_1.1") and not is_squad("sst-2")
    assert positive_index(("neg", "pos"), "pos") == 1 and positive_index(("1", "0"), "1") == 0
    assert positive_index(("entailment", "not_entailment"), "1") == 1   # no "1": class 1, as GLUE scores it
    assert SentenceTask(get_task("MRPC")).positive == 1 and SentenceTask(get_task("STS-B")).positive is None


@pytest.mark.parametrize("name", ["SST-2", "MRPC", "CoLA"])
def test_classification_examples_to_score(data_dir, tok, name):
    data = _glue(data_dir, tok, name)
    task, split = data.task, data.dev["dev"]
    assert isinstance(task, SentenceTask) and task.head_config()["num_labels"] == 2
    gold = np.array([task.spec.labels.index(e.label) for e in split.examples])
    for e, f in zip(split.examples, split.features):
        assert f["input_ids"][0] == tok.cls_id and f["input_ids"][-1] == tok.sep_id and len(f["input_ids"]) <= 64
        assert f["label"] == task.spec.labels.index(e.label)
        assert (1 in f["token_type_ids"]) == (task.spec.text_b is not None)
    # Outputs -> predictions -> score: a fixed, imperfect classifier (right on 3 of 4 examples).
    rng = np.random.default_rng(0)
    wrong = rng.random(len(gold)) < 0.25
    preds_true = np.where(wrong, 1 - gold, gold)
    logits = np.eye(2)[preds_true] + 0.1 * rng.random((len(gold), 2))
    outs = task.outputs(_logits_out(logits), [len(f["input_ids"]) for f in split.features])
    preds = task.predict(split.examples, split.features, outs)
    assert (preds == preds_true).all()
    m = task.score(split.gold, preds)
    assert m["total"] == N
    if "accuracy" in task.spec.metrics:
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(gold, preds_true))
    if "f1" in task.spec.metrics:
        assert m["f1"] == pytest.approx(skm.f1_score(gold, preds_true, pos_label=task.positive))
    if "matthews_correlation" in task.spec.metrics:
        assert m["matthews_correlation"] == pytest.approx(skm.matthews_corrcoef(gold, preds_true))


def test_regression_examples_to_score_and_submission_round_trip(data_dir, tok, tmp_path):
    data = _glue(data_dir, tok, "STS-B")
    task, split = data.task, data.dev["dev"]
    assert task.is_regression and task.head_config() == {"num_labels": 1, "problem_type": "regression"}
    gold = np.array([e.label for e in split.examples])
    scores = np.clip(gold + np.random.default_rng(1).normal(0, 1, len(gold)), 0, 5)
    outs = task.outputs(_logits_out(scores[:, None]), [len(f["input_ids"]) for f in split.features])
    preds = task.predict(split.examples, split.features, outs)
    m = task.score(split.gold, preds)
    assert m["pearson"] == pytest.approx(stats.pearsonr(gold, preds)[0], abs=1e-6)
    assert m["spearmanr"] == pytest.approx(stats.spearmanr(gold, preds)[0], abs=1e-6)
    # The submission file `write` makes, re-scored by `mobilebert score glue`, gives the same numbers: one scoring.
    dev = tmp_path / "dev.tsv"
    lines = (data_dir / "glue/STS-B/dev.tsv").read_text(encoding="utf-8").splitlines()[:N + 1]
    dev.write_text("\n".join(lines) + "\n", encoding="utf-8")
    [sub] = task.write(split, preds, tmp_path / "sub", "dev")
    assert score_glue("STS-B", str(dev), str(sub)) == m


def test_custom_jsonl_task_scores_f1_for_its_positive_label(data_dir, tok, tmp_path):
    sst = (data_dir / "glue/SST-2/dev.tsv").read_text(encoding="utf-8").splitlines()[1:N + 1]
    rows = [{"review": s, "sentiment": "pos" if y == "1" else "neg"} for s, y in (ln.split("\t") for ln in sst)]
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ds = FinetuneDataSettings(task="custom", train_file=str(path), dev_file=str(path), text_a="review", label="sentiment",
                      max_seq_length=64)
    data = build_task_data(ds, tok, splits=("train", "dev"))
    task, split = data.task, data.dev["dev"]
    assert task.spec.labels == ("neg", "pos") and task.positive == 1 and len(data.train) == N
    gold = np.array([task.spec.labels.index(r["sentiment"]) for r in rows])
    preds_true = gold.copy()
    preds_true[:10] = 1   # some false positives
    outs = task.outputs(_logits_out(np.eye(2)[preds_true]), [0] * N)
    m = task.score(split.gold, task.predict(split.examples, split.features, outs))
    assert m["f1"] == pytest.approx(skm.f1_score(gold, preds_true, pos_label=1))


def test_model_run_and_evaluate_agree_with_the_task_steps(data_dir, tok, tmp_path):
    """TaskData.run/evaluate with a real (random) model: the same numbers as the task's steps by hand."""
    data = _glue(data_dir, tok, "RTE")
    model = load_model_for_task("debug-mobilebert", data.task, tok)
    split = data.dev["dev"]
    outs = data.run(model, split.features, 16, torch.device("cpu"))
    by_hand = data.task.score(split.gold, data.task.predict(split.examples, split.features, outs))
    result = data.evaluate(model, torch.device("cpu"), "fp32", 8, tmp_path)
    assert result["metrics"] == by_hand
    assert (tmp_path / "dev.tsv").read_text().splitlines()[0] == "index\tprediction"


def _squad(tmp_path, tok, version):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(squad_json(version)), encoding="utf-8")
    gold = read_squad(path)
    task = SquadTask(gold.version_2)
    return task, gold, task.features(gold.examples, tok)


def _pointing_logits(feats, examples):
    """Start/end logits that pick each example's first gold answer (or [CLS] when it has none)."""
    outs = []
    for f in feats:
        ex = examples[f["squad"].example_index]
        s, e = np.full(len(f["input_ids"]), -10.0), np.full(len(f["input_ids"]), -10.0)
        if ex.answers:
            a0 = ex.answers[0]["answer_start"]
            a1 = a0 + len(ex.answers[0]["text"])
            inside = [i for i, o in enumerate(f["squad"].offsets) if o is not None and o[1] > a0 and o[0] < a1]
            s[inside[0]], e[inside[-1]] = 10.0, 10.0
        else:
            s[0], e[0] = 10.0, 10.0
        outs.append((s, e))
    return outs


@pytest.mark.parametrize("version", ["1.1", "v2.0"])
def test_squad_examples_to_score(tmp_path, tok, version):
    task, gold, feats = _squad(tmp_path, tok, version)
    assert task.name == ("SQuAD v2.0" if version == "v2.0" else "SQuAD v1.1") and task.head_config() == {"num_labels": 2}
    assert all(f["input_ids"][0] == tok.cls_id and len(f["input_ids"]) <= 384 for f in feats)
    outs = _pointing_logits(feats, gold.examples)
    width = max(len(o[0]) for o in outs) + 3
    padded = SimpleNamespace(**{k: torch.tensor(np.stack([np.pad(o[i], (0, width - len(o[i]))) for o in outs]))
                                for i, k in enumerate(task.output_keys)})
    cut = task.outputs(padded, [len(f["input_ids"]) for f in feats])   # padding is cut off per feature
    assert all(np.array_equal(a[0], b[0].astype(np.float32)) for a, b in zip(cut, outs))
    preds = task.predict(gold.examples, feats, cut)
    assert preds[0]["q1"] == "Denver Broncos" and preds[0]["q3"] == "24\u201310"
    m = task.score(gold, preds)
    if version == "v2.0":
        assert preds[0]["q4"] == "" and m["exact"] == 100.0 and m["total"] == 4
    else:
        assert m == {"exact_match": 100.0, "f1": 100.0, "total": 3}
    written = task.write(None, preds, tmp_path / "out", "dev", dev=True)
    names = {p.name for p in written}
    assert names == ({"predictions.json", "nbest_predictions.json"} | ({"null_odds.json"} if version == "v2.0" else set()))
    assert json.loads((tmp_path / "out/predictions.json").read_text()) == preds[0]


def test_head_mismatch(tmp_path):
    from mobilebert import get_config

    sst2, mnli, squad = SentenceTask(get_task("SST-2")), SentenceTask(get_task("MNLI")), SquadTask()
    cfg = get_config("debug-mobilebert", **sst2.head_config())
    assert sst2.head_mismatch(cfg) is None
    bad = mnli.head_mismatch(cfg)
    assert (bad.what, bad.have, bad.want) == ("count", 2, 3)
    swapped = get_config("debug-mobilebert", num_labels=2, id2label={0: "1", 1: "0"})
    assert sst2.head_mismatch(swapped).what == "labels"
    generic = get_config("debug-mobilebert", num_labels=2, id2label={0: "LABEL_0", 1: "LABEL_1"})
    assert sst2.head_mismatch(generic).what == "labels" and sst2.head_mismatch(generic, generic_names_ok=True) is None
    assert squad.head_mismatch(get_config("debug-mobilebert", num_labels=2)) is None
    assert squad.head_mismatch(get_config("debug-mobilebert", num_labels=3)).what == "qa"
