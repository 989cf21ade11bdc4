"""GLUE metrics against scikit-learn/scipy, and SQuAD EM/F1 on hand-built edge cases."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from mobilebert.tasks import metrics as M


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y, p = rng.integers(0, 2, n), rng.integers(0, 2, n)
    assert M.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
    assert M.f1_binary(p, y) == pytest.approx(skm.f1_score(y, p), abs=1e-12)
    assert M.matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)
    # Multi-class MCC (MNLI-style three labels) and a skewed predictor.
    y3, p3 = rng.integers(0, 3, n), np.where(rng.random(n) < 0.7, rng.integers(0, 3, n), 0)
    assert M.matthews_corrcoef(p3, y3) == pytest.approx(skm.matthews_corrcoef(y3, p3), abs=1e-12)
    assert M.accuracy(p3, y3) == pytest.approx(skm.accuracy_score(y3, p3), abs=1e-12)


def test_degenerate_classification_cases_match_sklearn():
    y = np.array([0, 1, 1, 0, 1])
    const = np.ones(5, dtype=int)
    assert M.matthews_corrcoef(const, y) == skm.matthews_corrcoef(y, const) == 0.0
    assert M.f1_binary(np.zeros(5, int), np.zeros(5, int)) == skm.f1_score(np.zeros(5), np.zeros(5), zero_division=0)
    assert M.f1_binary(np.zeros(5, int), y) == 0.0
    assert M.matthews_corrcoef(y, y) == pytest.approx(1.0)
    assert M.matthews_corrcoef(1 - y, y) == pytest.approx(-1.0)
    # Positive class other than 1 (a task whose labels are strings mapped to ids).
    assert M.f1_binary(y, 1 - y, positive=0) == skm.f1_score(1 - y, y, pos_label=0)
    with pytest.raises(ValueError):
        M.accuracy([1, 0], [1])


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 500))
    x = rng.normal(size=n)
    y = x * rng.uniform(-1, 1) + rng.normal(size=n)
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-10)
    assert M.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-10)
    # STS-B gold scores are coarse (0.0, 0.2, ..., 5.0): many ties, handled with average ranks.
    gold = np.round(rng.uniform(0, 5, n) * 5) / 5
    pred = np.round(gold + rng.normal(scale=1.0, size=n))
    assert M.spearman(pred, gold) == pytest.approx(stats.spearmanr(pred, gold)[0], abs=1e-10)
    np.testing.assert_allclose(M.rankdata(pred), stats.rankdata(pred, method="average"))


def test_constant_input_gives_nan_like_scipy():
    x = np.array([1.0, 2.0, 3.0])
    assert math.isnan(M.pearson(np.ones(3), x))
    assert math.isnan(M.spearman(x, np.full(3, 2.5)))
    assert M.finite_or_none(float("nan")) is None and M.finite_or_none(0.5) == 0.5
    assert M.pearson([1e200, 2e200, 3e200], [1, 2, 3]) == pytest.approx(1.0)


def test_glue_metrics_names():
    out = M.glue_metrics(("accuracy", "f1"), [1, 0, 1], [1, 1, 1])
    assert out == {"accuracy": pytest.approx(2 / 3), "f1": pytest.approx(0.8)}
    with pytest.raises(ValueError):
        M.glue_metrics(("bleu",), [1], [1])


# ------------------------------------------------------------------------------------ SQuAD


@pytest.mark.parametrize("raw, norm", [
    ("The Denver Broncos", "denver broncos"),
    ("an apple, a pear and THE plum!", "apple pear and plum"),
    ("theory of the atheist", "theory of atheist"),     # articles only as whole words
    ("  lots\tof \n whitespace  ", "lots of whitespace"),
    ("U.S.A.", "usa"),
    ("$1,000.50", "100050"),
    # Non-ASCII punctuation (em dash, curly quotes) is kept: only string.punctuation is removed.
    ("\u00c9cole \u2014 na\u00efve \u201cquote\u201d", "\u00e9cole \u2014 na\u00efve \u201cquote\u201d"),
    ("a", ""),
    ("the-the", "thethe"),                                # punctuation goes first: no article left
    ("", ""),
])
def test_normalize_answer(raw, norm):
    assert M.normalize_answer(raw) == norm


def test_v1_scores():
    assert M.v1_exact("the Broncos!", "Broncos")
    assert M.v1_f1("Panthers team", "Carolina Panthers") == pytest.approx(0.5)
    assert M.v1_f1("", "") == 0.0            # v1.1: no common token -> 0, even for two empty answers
    assert M.v1_f1("x b b", "b b c") == pytest.approx(2 / 3)  # repeated tokens count by multiplicity
    data = [{"paragraphs": [{"qas": [
        {"id": "q1", "answers": [{"text": "Denver Broncos"}, {"text": "Broncos"}, {"text": "Denver"}]},
        {"id": "q2", "answers": [{"text": "Carolina Panthers"}]},
        {"id": "q3", "answers": [{"text": "Levi's Stadium"}]},
    ]}]}]
    warned = []
    out = M.squad_v1_evaluate(data, {"q1": "Broncos", "q2": "Panthers team"}, warn=warned.append)
    # q1 exact on the second gold answer; q2 F1 0.5; q3 unanswered -> 0 with a warning, still in the total.
    assert out == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(150 / 3)}
    assert warned == ["Unanswered question q3 will receive score 0."]


def test_v2_scores_edge_cases():
    assert M.v2_f1("", "") == 1.0 and M.v2_exact("", "") == 1
    assert M.v2_f1("", "something") == 0.0
    assert M.v2_f1("the", "") == 1.0         # a gold that normalises to nothing is a no-answer


def _v2_data():
    return [{"paragraphs": [{"qas": [
        {"id": "q1", "answers": [{"text": "Denver Broncos"}, {"text": "Broncos"}]},
        {"id": "q2", "answers": [{"text": "Carolina Panthers"}]},
        {"id": "q3", "answers": []},
        {"id": "q4", "answers": [], "is_impossible": True},
    ]}]}]


def test_v2_evaluate_by_hand():
    preds = {"q1": "the Broncos", "q2": "Panthers team", "q3": "", "q4": "Santa Clara"}
    na = {"q1": 0.1, "q2": 0.6, "q3": 0.9, "q4": 0.3}
    out = M.squad_v2_evaluate(_v2_data(), preds, na)
    assert list(out) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                         "NoAns_exact", "NoAns_f1", "NoAns_total", "best_exact", "best_exact_thresh",
                         "best_f1", "best_f1_thresh"]
    assert out["exact"] == 50.0 and out["f1"] == 62.5 and out["total"] == 4
    assert (out["HasAns_exact"], out["HasAns_f1"], out["HasAns_total"]) == (50.0, 75.0, 2)
    assert (out["NoAns_exact"], out["NoAns_f1"], out["NoAns_total"]) == (50.0, 50.0, 2)
    # Sorted by na-prob: q1 (+1 -> 3 of 4, threshold 0.1), q4 (-1), q2 (+0 / +0.5), q3 (0).
    assert (out["best_exact"], out["best_exact_thresh"]) == (75.0, 0.1)
    assert (out["best_f1"], out["best_f1_thresh"]) == (75.0, 0.1)
    # With a 0.5 threshold q2 and q3 become no-answer predictions.
    out = M.squad_v2_evaluate(_v2_data(), preds, na, na_prob_thresh=0.5)
    assert out["exact"] == 50.0 and out["f1"] == 50.0
    # Without na-probs there are no best_* keys; and every question needs a prediction.
    assert "best_f1" not in M.squad_v2_evaluate(_v2_data(), preds)
    with pytest.raises(ValueError, match="no prediction"):
        M.squad_v2_evaluate(_v2_data(), {"q1": "x"})


def test_is_v2_dataset():
    assert M.is_v2_dataset({"version": "v2.0", "data": []})
    assert not M.is_v2_dataset({"version": "1.1", "data": [{"paragraphs": [{"qas": [{"answers": [{"text": "x"}]}]}]}]})
    assert M.is_v2_dataset({"data": _v2_data()})
