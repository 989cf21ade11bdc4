"""`mobilebert score squad|glue`: output keys and values, agreement with sklearn/scipy, exit status 2 on bad input."""

import json

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from mobilebert.cli import main
from mobilebert.tasks.glue import get_task, read_examples, write_submission

from helpers import squad_json


def _run(capsys, *argv):
    rc = main(["score", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_score_squad_v1(tmp_path, capsys):
    dev = _write_json(tmp_path / "dev-v1.1.json", squad_json("1.1"))
    preds = _write_json(tmp_path / "pred.json", {"q1": "the Denver Broncos", "q2": "Santa Clara"})
    rc, out, err = _run(capsys, "squad", dev, preds)
    assert rc == 0 and "\n" not in out.strip()              # one line, as evaluate-v1.1.py prints
    res = json.loads(out)
    # q1 exact; q2 F1 vs "Santa Clara, California" = 2*(1*2/3)/(1+2/3) = 0.8; q3 unanswered -> 0.
    assert list(res) == ["exact_match", "f1"]
    assert res["exact_match"] == pytest.approx(100 / 3) and res["f1"] == pytest.approx(180 / 3)
    assert "Unanswered question q3 will receive score 0." in err


def test_score_squad_v2_with_na_probs(tmp_path, capsys):
    dev = _write_json(tmp_path / "dev-v2.0.json", squad_json("v2.0"))
    preds = _write_json(tmp_path / "pred.json", {"q1": "Denver Broncos", "q2": "Levi's Stadium", "q3": "24", "q4": ""})
    na = _write_json(tmp_path / "na.json", {"q1": -3.0, "q2": -1.0, "q3": 2.0, "q4": 4.0})
    rc, out, _ = _run(capsys, "squad", dev, preds)
    res = json.loads(out)
    assert rc == 0 and list(res) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                                     "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert res["exact"] == 75.0 and res["NoAns_total"] == 1 and res["HasAns_total"] == 3
    rc, out, _ = _run(capsys, "squad", dev, preds, "--na-probs", na, "--out", tmp_path / "m.json")
    res = json.loads(out)
    # Start at 1 (the NoAns count); q1 +1, q2 +1 (best so far: threshold -1.0), q3 wrong +0, q4 "" +0.
    assert res["best_exact"] == 75.0 and res["best_exact_thresh"] == -1.0
    assert res["best_f1"] == 75.0 and res["best_f1_thresh"] == -1.0  # "24" vs "24\u201310": F1 0 (no ASCII dash)
    assert json.loads((tmp_path / "m.json").read_text()) == res


@pytest.mark.parametrize("content, message", [
    ('{"q1": "x",\n "q2": }', "pred.json:2: not valid JSON"),
    ('["x"]', "expected a JSON object"),
    ('{"q1": 3}', "question q1: expected an answer string"),
])
def test_score_squad_bad_predictions(tmp_path, capsys, content, message):
    dev = _write_json(tmp_path / "dev.json", squad_json("v2.0"))
    (tmp_path / "pred.json").write_text(content, encoding="utf-8")
    rc, out, err = _run(capsys, "squad", dev, tmp_path / "pred.json")
    assert rc == 2 and out == "" and message in err and err.count("\n") == 1


def test_score_squad_v2_missing_prediction(tmp_path, capsys):
    dev = _write_json(tmp_path / "dev.json", squad_json("v2.0"))
    rc, _, err = _run(capsys, "squad", dev, _write_json(tmp_path / "p.json", {"q1": "x"}))
    assert rc == 2 and "3 of 4 questions have no prediction" in err
    rc, _, err = _run(capsys, "squad", tmp_path / "none.json", tmp_path / "p.json")
    assert rc == 2 and "none.json: file not found" in err


@pytest.mark.parametrize("kind, args", [("squad", ()), ("glue", ("sst-2",))])
def test_score_a_folder_instead_of_a_file_is_one_line(tmp_path, capsys, kind, args):
    rc, _, err = _run(capsys, kind, *args, tmp_path, tmp_path)
    assert rc == 2 and f"{tmp_path}: is a folder, not a file" in err and "Traceback" not in err


def _random_predictions(task, examples, seed):
    rng = np.random.default_rng(seed)
    if task.is_regression:
        # Noisy but correlated, with ties from rounding, like a real STS-B model.
        return [round(e.label + rng.normal(), 1) for e in examples]
    gold = [task.labels.index(e.label) for e in examples]
    return [g if rng.random() < 0.7 else int(rng.integers(task.num_labels)) for g in gold]


@pytest.mark.parametrize("name", ["CoLA", "SST-2", "MRPC", "STS-B", "RTE", "WNLI"])
def test_score_glue_real_dev_matches_sklearn_scipy(data_dir, tmp_path, capsys, name):
    task = get_task(name)
    dev = data_dir / "glue" / task.dir_name / "dev.tsv"
    examples = read_examples(task, dev, "dev").examples
    preds = _random_predictions(task, examples, seed=len(name))
    # Shuffled order: predictions are matched by index, not by position.
    order = np.random.default_rng(1).permutation(len(examples))
    path = write_submission(task, [examples[i].guid for i in order], [preds[i] for i in order], tmp_path)
    rc, out, _ = _run(capsys, "glue", name.lower(), dev, path)
    res = json.loads(out)
    assert rc == 0 and res["total"] == len(examples)
    if task.is_regression:
        gold = [e.label for e in examples]
        back = [float(p) for p in preds]
        assert res["pearson"] == pytest.approx(stats.pearsonr(back, gold)[0], abs=1e-12)
        assert res["spearmanr"] == pytest.approx(stats.spearmanr(back, gold)[0], abs=1e-12)
        return
    gold = [task.labels.index(e.label) for e in examples]
    expected = {"matthews_correlation": skm.matthews_corrcoef(gold, preds),
                "accuracy": skm.accuracy_score(gold, preds), "f1": skm.f1_score(gold, preds)}
    assert set(res) == set(task.metrics) | {"total"}
    for k in task.metrics:
        assert res[k] == pytest.approx(expected[k], abs=1e-12)


def test_score_glue_errors(data_dir, tmp_path, capsys):
    dev = data_dir / "glue" / "RTE" / "dev.tsv"
    pred = tmp_path / "RTE.tsv"
    pred.write_text("index\tprediction\n0\tentailment\n", encoding="utf-8")
    rc, _, err = _run(capsys, "glue", "rte", dev, pred)
    assert rc == 2 and "276 of 277 dev examples have no prediction (first: index 1, " in err and "dev.tsv:3" in err
    pred.write_text("index\tprediction\n0\tyes\n", encoding="utf-8")
    rc, _, err = _run(capsys, "glue", "rte", dev, pred)
    assert rc == 2 and "RTE.tsv:2: prediction 'yes' is not one of entailment, not_entailment" in err
    pred.write_text("index\tprediction\n0\tentailment\n0\tentailment\n", encoding="utf-8")
    rc, _, err = _run(capsys, "glue", "rte", dev, pred)
    assert rc == 2 and "RTE.tsv:3: index 0 already predicted on line 2" in err
    rc, _, err = _run(capsys, "glue", "boolq", dev, pred)
    assert rc == 2 and "unknown GLUE task 'boolq'" in err


def test_score_glue_skips_bad_dev_rows_only_when_asked(tmp_path, capsys):
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\ngood\t1\nbad\t1\textra\nugly\t0\n", encoding="utf-8")
    pred = tmp_path / "SST-2.tsv"
    pred.write_text("index\tprediction\n0\t1\n1\t1\n2\t1\n", encoding="utf-8")
    rc, _, err = _run(capsys, "glue", "sst-2", dev, pred)
    assert rc == 2 and "dev.tsv:3: has 3 columns, expected 2" in err
    rc, out, err = _run(capsys, "glue", "sst-2", dev, pred, "--on-bad-row", "skip")
    res = json.loads(out)
    assert rc == 0 and res == {"accuracy": 0.5, "total": 2, "skipped_rows": 1} and "skipped 1 bad row" in err
