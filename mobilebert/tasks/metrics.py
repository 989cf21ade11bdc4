"""Evaluation metrics, computed exactly as GLUE and the official SQuAD scripts define them.

GLUE: accuracy, binary F1 (MRPC, QQP), Matthews correlation (CoLA), Pearson and Spearman (STS-B).
They are written with numpy so that evaluation needs neither scikit-learn nor scipy at run time;
the tests check them against `sklearn.metrics` and `scipy.stats` (Spearman uses average ranks for
ties, as `scipy.stats.spearmanr` does).

SQuAD: `squad_v1_evaluate` follows `evaluate-v1.1.py` and `squad_v2_evaluate` follows
`evaluate-v2.0.py` line by line (answer normalization, max over several gold answers, the
HasAns/NoAns breakdown, the na-prob threshold and `find_best_thresh`). The two scripts differ in
small ways (empty answers, unanswered questions) and each function keeps its own script's rules.
Scores are percentages for SQuAD (as the scripts print them) and fractions for GLUE (as the
`evaluate`/sklearn conventions report them).
"""

from __future__ import annotations

import collections
import math
import re
import string

import numpy as np

# --------------------------------------------------------------------------------------- GLUE


def _arrays(preds, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(preds), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be 1-D and the same length")
    if p.size == 0:
        raise ValueError("no examples to score")
    return p, y


def accuracy(preds, labels) -> float:
    p, y = _arrays(preds, labels)
    return float(np.mean(p == y))


def f1_binary(preds, labels, positive=1) -> float:
    """F1 of the positive class; 0.0 when there are no true or predicted positives (sklearn's default)."""
    p, y = _arrays(preds, labels)
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2.0 * tp / denom


def matthews_corrcoef(preds, labels) -> float:
    """Multi-class Matthews correlation from the confusion matrix (sklearn's formula; 0.0 if undefined)."""
    p, y = _arrays(preds, labels)
    classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (codes[: len(y)], codes[len(y):]), 1.0)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n_correct, n = np.trace(cm), cm.sum()
    cov_ytyp = n_correct * n - np.dot(t_sum, p_sum)
    cov_ypyp = n * n - np.dot(p_sum, p_sum)
    cov_ytyt = n * n - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def pearson(x, y) -> float:
    """Pearson r; NaN when either input is constant (as scipy returns)."""
    a, b = _arrays(x, y)
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.size < 2:
        raise ValueError("Pearson correlation needs at least 2 examples")
    am, bm = a - a.mean(), b - b.mean()
    ma, mb = np.abs(am).max(), np.abs(bm).max()
    if ma == 0 or mb == 0:
        return float("nan")
    # Scale by the largest deviation first (as scipy does) so huge values cannot overflow the norm.
    am, bm = am / ma, bm / mb
    na, nb = np.linalg.norm(am), np.linalg.norm(bm)
    # Normalise before the dot product (as scipy does) to avoid overflow and keep |r| <= 1.
    r = float(np.dot(am / na, bm / nb))
    return max(-1.0, min(1.0, r))


def rankdata(a) -> np.ndarray:
    """1-based ranks; tied values share the average of their ranks (scipy's method='average')."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # Start of each run of equal values, then the average rank of each run.
    starts = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    run_id = np.cumsum(starts) - 1
    run_starts = np.flatnonzero(starts)
    run_ends = np.r_[run_starts[1:], len(a)]
    avg = (run_starts + run_ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def spearman(x, y) -> float:
    a, b = _arrays(x, y)
    return pearson(rankdata(a), rankdata(b))


def glue_metrics(task_metrics: tuple[str, ...], preds, labels, positive=None) -> dict[str, float]:
    """Compute the named metrics ("matthews_correlation", "accuracy", "f1", "pearson", "spearmanr")."""
    out: dict[str, float] = {}
    for name in task_metrics:
        if name == "matthews_correlation":
            out[name] = matthews_corrcoef(preds, labels)
        elif name == "accuracy":
            out[name] = accuracy(preds, labels)
        elif name == "f1":
            out[name] = f1_binary(preds, labels, positive=1 if positive is None else positive)
        elif name == "pearson":
            out[name] = pearson(preds, labels)
        elif name == "spearmanr":
            out[name] = spearman(preds, labels)
        else:
            raise ValueError(f"unknown metric {name!r}")
    return out


# --------------------------------------------------------------------------------------- SQuAD

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)  # ASCII only, as in the official scripts


def normalize_answer(s: str) -> str:
    """Lower case, drop ASCII punctuation, drop articles, collapse whitespace (official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


# v1.1 rules ---------------------------------------------------------------------------------


def v1_f1(prediction: str, ground_truth: str) -> float:
    pred_toks = normalize_answer(prediction).split()
    gold_toks = normalize_answer(ground_truth).split()
    num_same = sum((collections.Counter(pred_toks) & collections.Counter(gold_toks)).values())
    if num_same == 0:  # v1.1 gives 0 even when both are empty
        return 0.0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def v1_exact(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def squad_v1_evaluate(dataset: list, predictions: dict[str, str], warn=None) -> dict[str, float]:
    """`evaluate-v1.1.py`: unanswered questions count as 0 and are reported through `warn`."""
    f1 = exact = total = 0.0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    if warn is not None:
                        warn(f"Unanswered question {qa['id']} will receive score 0.")
                    continue
                golds = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                # max() over an empty list raises in the official script too; report it instead.
                if not golds:
                    raise ValueError(f"question {qa['id']} has no gold answers (a v2.0 file? use the v2.0 scorer)")
                exact += max(v1_exact(pred, g) for g in golds)
                f1 += max(v1_f1(pred, g) for g in golds)
    if total == 0:
        raise ValueError("the dataset holds no questions")
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


# v2.0 rules ---------------------------------------------------------------------------------


def _v2_tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def v2_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def v2_f1(a_gold: str, a_pred: str) -> float:
    gold_toks, pred_toks = _v2_tokens(a_gold), _v2_tokens(a_pred)
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # A no-answer on either side scores 1 only when both are no-answers.
        return float(gold_toks == pred_toks)
    num_same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def _qid_to_has_ans(dataset: list) -> dict[str, bool]:
    return {qa["id"]: bool(qa["answers"]) for a in dataset for p in a["paragraphs"] for qa in p["qas"]}


def _raw_scores(dataset: list, preds: dict[str, str]):
    exact_scores, f1_scores = {}, {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                # Gold answers that normalise to nothing do not count; unanswerable -> only "" is right.
                golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
                if qid not in preds:
                    continue
                exact_scores[qid] = max(v2_exact(g, preds[qid]) for g in golds)
                f1_scores[qid] = max(v2_f1(g, preds[qid]) for g in golds)
    return exact_scores, f1_scores


def _apply_no_ans_threshold(scores, na_probs, qid_to_has_ans, thresh):
    return {qid: (float(not qid_to_has_ans[qid]) if na_probs[qid] > thresh else s) for qid, s in scores.items()}


def _eval_dict(exact_scores, f1_scores, qid_list=None) -> dict:
    qids = list(exact_scores) if not qid_list else qid_list
    total = len(qids)
    return {"exact": 100.0 * sum(exact_scores[k] for k in qids) / total,
            "f1": 100.0 * sum(f1_scores[k] for k in qids) / total,
            "total": total}


def find_best_thresh(preds, scores, na_probs, qid_to_has_ans) -> tuple[float, float]:
    """Sweep the na-prob threshold over the sorted na-probs; returns (best score %, threshold)."""
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = best_score = num_no_ans
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score, best_thresh = cur_score, na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def squad_v2_evaluate(dataset: list, preds: dict[str, str], na_probs: dict[str, float] | None = None,
                      na_prob_thresh: float = 1.0) -> dict:
    """`evaluate-v2.0.py`. Every question must have a prediction (the official script fails otherwise)."""
    qid_to_has_ans = _qid_to_has_ans(dataset)
    if not qid_to_has_ans:
        raise ValueError("the dataset holds no questions")
    missing = [q for q in qid_to_has_ans if q not in preds]
    if missing:
        raise ValueError(f"{len(missing)} of {len(qid_to_has_ans)} questions have no prediction "
                         f"(first: {missing[0]})")
    have_na = na_probs is not None
    if na_probs is None:
        na_probs = {k: 0.0 for k in preds}
    else:
        missing = [q for q in qid_to_has_ans if q not in na_probs]
        if missing:
            raise ValueError(f"{len(missing)} questions have no na-prob (first: {missing[0]})")
    has_ans = [k for k, v in qid_to_has_ans.items() if v]
    no_ans = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = _raw_scores(dataset, preds)
    exact_th = _apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    f1_th = _apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    out = _eval_dict(exact_th, f1_th)
    for prefix, qids in (("HasAns", has_ans), ("NoAns", no_ans)):
        if qids:
            for k, v in _eval_dict(exact_th, f1_th, qids).items():
                out[f"{prefix}_{k}"] = v
    if have_na:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(preds, exact_raw, na_probs, qid_to_has_ans)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
    return out


def is_v2_dataset(dataset_json: dict) -> bool:
    """True for SQuAD v2.0 files: version "v2.0", or any question marked impossible or without answers."""
    version = str(dataset_json.get("version", ""))
    if version.lstrip("v").startswith("2"):
        return True
    return any(qa.get("is_impossible") or not qa.get("answers")
               for a in dataset_json.get("data", []) for p in a.get("paragraphs", []) for qa in p.get("qas", []))


def finite_or_none(x):
    """JSON has no NaN: report undefined correlations as null."""
    return None if isinstance(x, float) and math.isnan(x) else x
