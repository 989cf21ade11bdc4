"""SQuAD v1.1/v2.0: reading and checking the JSON, windowed features, answer extraction.

Follows Google's `run_squad.py` (the code MobileBERT's SQuAD numbers come from): the question is cut
to `max_query_length` word pieces; the context is cut into windows of at most
`max_seq_length - len(question) - 3` pieces that start every `doc_stride` pieces (BERT's meaning
of doc_stride: the step between windows, not the overlap as in Hugging Face's `stride`); answers
outside a window, and unanswerable questions, point at [CLS] (position 0). Postprocessing takes the
n-best start and end logits of every window, keeps spans inside the context, no longer than
`max_answer_length` and starting where the window has maximal context, maps them back to the
original context text through the tokenizer's character offsets, and for v2.0 compares the best
span against the null score (CLS start + CLS end) with `null_score_diff_threshold`.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilebert.errors import ConfigError, DataError, read_text
from mobilebert.tasks.glue import _BadRows


NO_SPAN_ODDS = 1e6  # v2 null-odds of a question for which no span is valid


@dataclass
class SquadExample:
    qid: str
    question: str
    context: str
    answers: list[dict]          # [{"text", "answer_start"}]; empty for unanswerable questions
    is_impossible: bool = False
    line_no: int = 0


@dataclass
class SquadData:
    examples: list[SquadExample]
    version_2: bool
    path: str
    skipped: int = 0
    problems: list[str] | None = None

    def as_dataset(self) -> list:
        """The examples in the official JSON shape, for `metrics.squad_v1_evaluate`/`squad_v2_evaluate`."""
        return [{"paragraphs": [{"qas": [{"id": e.qid, "answers": e.answers} for e in self.examples]}]}]


def load_json(path: str | Path) -> dict:
    path = Path(path)
    text = read_text(path, encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None


class _LineFinder:
    """Line numbers for question ids: json gives none, so find each id's text in the raw file, in order."""

    def __init__(self, path: Path):
        self.text = path.read_text(encoding="utf-8")
        self.pos = 0

    def line_of(self, qid) -> int:
        needle = json.dumps(str(qid), ensure_ascii=False)
        i = self.text.find(needle, self.pos)
        if i < 0:
            i = self.text.find(needle)
        if i < 0:
            return 0
        self.pos = i + len(needle)   # ids come in file order: a repeated id is found at its second place
        return self.text.count("\n", 0, i) + 1


def check_gold_ids(path: str | Path, data: dict) -> None:
    """A gold file for scoring, checked the way the official scripts read it: the data/paragraphs/qas
    nesting, each question's id and answers list; and what those scripts accept silently but makes a score
    wrong: a question id used twice (one prediction then counts for both) and an unanswerable question
    (is_impossible) that lists answers. One DataError naming the file, line (or JSON path) and id."""
    path = Path(path)
    lines, seen = _LineFinder(path), {}
    for ai, article in enumerate(data["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(f"{path}: data[{ai}] has no \"paragraphs\" list")
        for pi, par in enumerate(article["paragraphs"]):
            if not isinstance(par, dict) or not isinstance(par.get("qas"), list):
                raise DataError(f"{path}: data[{ai}].paragraphs[{pi}] has no \"qas\" list")
            for qi, qa in enumerate(par["qas"]):
                where = f"data[{ai}].paragraphs[{pi}].qas[{qi}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), (str, int)) or isinstance(qa["id"], bool):
                    raise DataError(f"{path}: {where}: question without a string \"id\"")
                qid = str(qa["id"])
                line = lines.line_of(qid)
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(
                        isinstance(x, dict) and isinstance(x.get("text"), str) for x in answers):
                    raise DataError(f"{path}:{line}: question {qid}: \"answers\" must be a list of {{text, "
                                    "answer_start}")
                if qid in seen:
                    raise DataError(f"{path}:{line}: question id {qid} is used twice (first on line {seen[qid]})")
                seen[qid] = line
                if bool(qa.get("is_impossible", False)) and answers:
                    raise DataError(f"{path}:{line}: question {qid} has \"is_impossible\": true but lists answers")


def read_squad(path: str | Path, is_training: bool = False, on_bad_row: str = "error",
               check_offsets: bool = True) -> SquadData:
    """Read and check a SQuAD file; bad questions raise or are counted and skipped (`on_bad_row`)."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}:1: expected a SQuAD object with a \"data\" list")
    version_2 = str(data.get("version", "")).lstrip("v").startswith("2")
    lines = _LineFinder(path)
    bad = _BadRows(str(path), on_bad_row)
    examples: list[SquadExample] = []
    seen: set[str] = set()
    offset_warnings: list[str] = []
    for ai, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{path}: data[{ai}] has no \"paragraphs\" list")
        for pi, par in enumerate(paragraphs):
            qas = par.get("qas") if isinstance(par, dict) else None
            if not isinstance(qas, list):
                raise DataError(f"{path}: data[{ai}].paragraphs[{pi}] has no \"qas\" list")
            context = par.get("context")
            for qi, qa in enumerate(qas):
                where = f"data[{ai}].paragraphs[{pi}].qas[{qi}]"
                if not isinstance(qa, dict) or "id" not in qa:
                    bad(0, f"{where}: question without an \"id\"")
                    continue
                qid = str(qa["id"])
                line = lines.line_of(qid)
                report = lambda msg: bad(line, f"question {qid} ({where}): {msg}")  # noqa: E731
                if not isinstance(context, str) or not context.strip():
                    report("no context")
                    continue
                if qid in seen:
                    report("duplicate question id")
                    continue
                question = qa.get("question")
                if not isinstance(question, str) or not question.strip():
                    report("empty question")
                    continue
                impossible = bool(qa.get("is_impossible", False))
                version_2 |= impossible
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(
                        isinstance(a, dict) and isinstance(a.get("text"), str) for a in answers):
                    report("\"answers\" must be a list of {text, answer_start}")
                    continue
                if impossible and answers:
                    # SQuAD v2 keeps the plausible spans of an unanswerable question under "plausible_answers":
                    # answers here contradict the flag, and scoring would follow one or the other silently.
                    report("\"is_impossible\" is true but it lists answers (put them under \"plausible_answers\")")
                    continue
                if impossible:
                    answers = []
                elif not answers:
                    if is_training and not version_2:
                        report("no answer (a v1.1 training question needs one)")
                        continue
                    version_2 = True   # an answerable-looking question without answers: v2 semantics
                problem = _check_answers(context, answers, is_training) if check_offsets else None
                if problem and is_training:
                    report(problem)
                    continue
                if problem:
                    # Scoring uses answer texts only, so dropping the question would change the official
                    # number: keep it and warn (with file and line) instead.
                    offset_warnings.append(f"{path}:{line}: question {qid} ({where}): {problem}")
                seen.add(qid)
                examples.append(SquadExample(qid, question, context, answers, impossible or not answers, line))
    if offset_warnings:
        warnings.warn(f"{path}: {len(offset_warnings)} question(s) with answer offsets that do not match the context, "
                      f"kept for evaluation (scored on answer text); first: {offset_warnings[0]}", stacklevel=2)
    result = bad.finish(examples)
    return SquadData(examples, version_2, str(path), result.skipped, result.problems)


def _check_answers(context: str, answers: list[dict], is_training: bool) -> str | None:
    # Training uses the first answer only (as run_squad.py); evaluation scores on text, but a wrong
    # offset still means a broken file, so every answer is checked.
    for k, a in enumerate(answers[:1] if is_training else answers):
        start = a.get("answer_start")
        if not isinstance(start, int) or isinstance(start, bool):
            return f"answer {k} has no integer answer_start"
        text = a["text"]
        if not text.strip():
            return f"answer {k} is empty"
        if context[start:start + len(text)] != text:
            found = context[start:start + len(text)]
            return f"answer {k} {text!r} does not match the context at offset {start} ({found!r})"
    return None


@dataclass
class SquadFeature:
    example_index: int
    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]   # character span in the context, None outside the context
    token_is_max_context: list[bool]
    start_position: int = 0
    end_position: int = 0


def _windows(n_tokens: int, max_tokens: int, stride: int) -> list[tuple[int, int]]:
    spans, start = [], 0
    while True:
        length = min(n_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, stride)


def _is_max_context(spans, cur: int, position: int) -> bool:
    """A token seen in several windows is scored in the one where it has the most context around it."""
    best, best_i = None, None
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if start <= position <= end:
            score = min(position - start, end - position) + 0.01 * length
            if best is None or score > best:
                best, best_i = score, i
    return best_i == cur


def build_features(examples: list[SquadExample], tokenizer, max_seq_length: int = 384, doc_stride: int = 128,
                   max_query_length: int = 64, is_training: bool = False) -> list[SquadFeature]:
    """Window every example into features of at most `max_seq_length` tokens (unpadded)."""
    if max_seq_length - max_query_length - 3 <= 0:
        raise ConfigError(f"data.max_seq_length={max_seq_length} leaves no room for the context after "
                          f"data.max_query_length={max_query_length} and 3 special tokens")
    backend = tokenizer.backend
    backend.no_truncation()
    backend.no_padding()
    questions = backend.encode_batch([e.question for e in examples], add_special_tokens=False)
    contexts = sorted({e.context for e in examples})
    ctx_enc = dict(zip(contexts, backend.encode_batch(contexts, add_special_tokens=False)))
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    features = []
    for ei, (ex, q) in enumerate(zip(examples, questions)):
        q_ids = q.ids[:max_query_length]
        c = ctx_enc[ex.context]
        c_ids, c_off = c.ids, c.offsets
        spans = _windows(len(c_ids), max_seq_length - len(q_ids) - 3, doc_stride)
        tok_start = tok_end = None
        if is_training and not ex.is_impossible:
            a_start = ex.answers[0]["answer_start"]
            a_end = a_start + len(ex.answers[0]["text"])
            inside = [i for i, (s, e) in enumerate(c_off) if e > a_start and s < a_end]
            if inside:
                tok_start, tok_end = inside[0], inside[-1]
        head = len(q_ids) + 2  # [CLS] question [SEP]
        for si, (start, length) in enumerate(spans):
            ids = [cls_id] + q_ids + [sep_id] + c_ids[start:start + length] + [sep_id]
            types = [0] * head + [1] * (length + 1)
            offsets = [None] * head + [tuple(o) for o in c_off[start:start + length]] + [None]
            max_ctx = [False] * head + [_is_max_context(spans, si, start + j) for j in range(length)] + [False]
            sp = ep = 0
            if tok_start is not None and start <= tok_start and tok_end <= start + length - 1:
                sp, ep = tok_start - start + head, tok_end - start + head
            features.append(SquadFeature(ei, ids, types, offsets, max_ctx, sp, ep))
    return features


def postprocess(examples: list[SquadExample], features: list[SquadFeature], start_logits, end_logits,
                n_best_size: int = 20, max_answer_length: int = 30, version_2: bool = False,
                null_score_diff_threshold: float = 0.0):
    """Logits per feature -> (predictions qid->text, null_odds qid->score diff (v2 only), nbest qid->list)."""
    by_example = defaultdict(list)
    for fi, f in enumerate(features):
        by_example[f.example_index].append(fi)
    predictions, null_odds, all_nbest = {}, {}, {}
    for ei, ex in enumerate(examples):
        prelim = []
        score_null, null_pair = float("inf"), (0.0, 0.0)
        for fi in by_example[ei]:
            f = features[fi]
            n = len(f.input_ids)  # logits may be padded past the feature
            s, e = np.asarray(start_logits[fi], dtype=np.float64)[:n], np.asarray(end_logits[fi], dtype=np.float64)[:n]
            if version_2 and s[0] + e[0] < score_null:
                score_null, null_pair = float(s[0] + e[0]), (float(s[0]), float(e[0]))
            top_s = np.argsort(-s, kind="stable")[:n_best_size]
            top_e = np.argsort(-e, kind="stable")[:n_best_size]
            for a in top_s:
                if f.offsets[a] is None or not f.token_is_max_context[a]:
                    continue
                for b in top_e:
                    if f.offsets[b] is None or b < a or b - a + 1 > max_answer_length:
                        continue
                    prelim.append((float(s[a] + e[b]), float(s[a]), float(e[b]), fi, int(a), int(b)))
        if version_2:
            prelim.append((score_null, null_pair[0], null_pair[1], None, 0, 0))
        prelim.sort(key=lambda x: x[0], reverse=True)
        nbest, seen = [], set()
        for total, sl, el, fi, a, b in prelim:
            if len(nbest) >= n_best_size:
                break
            text = "" if fi is None else ex.context[features[fi].offsets[a][0]:features[fi].offsets[b][1]]
            if text in seen:
                continue
            seen.add(text)
            nbest.append({"text": text, "start_logit": sl, "end_logit": el})
        if version_2 and "" not in seen:
            nbest.append({"text": "", "start_logit": null_pair[0], "end_logit": null_pair[1]})
        no_span = not any(x["text"] for x in nbest)
        if no_span:
            # No valid span at all (e.g. a context shorter than every candidate): as run_squad.py.
            nbest.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0})
        totals = np.array([x["start_logit"] + x["end_logit"] for x in nbest])
        probs = np.exp(totals - totals.max())
        probs /= probs.sum()
        for x, p in zip(nbest, probs):
            x["probability"] = float(p)
        best = next(x for x in nbest if x["text"])
        if version_2 and no_span:
            # Only the null answer is possible: answer "" whatever the threshold (a large finite
            # odds value, since JSON has no infinity, keeps the best-threshold search consistent).
            null_odds[ex.qid], predictions[ex.qid] = NO_SPAN_ODDS, ""
        elif version_2:
            diff = score_null - best["start_logit"] - best["end_logit"]
            null_odds[ex.qid] = diff
            predictions[ex.qid] = "" if diff > null_score_diff_threshold else best["text"]
        else:
            predictions[ex.qid] = nbest[0]["text"]
        all_nbest[ex.qid] = nbest
    return predictions, null_odds, all_nbest


def write_json(obj, path: str | Path) -> Path:
    """Write predictions / null-odds / n-best JSON in the official layout (atomically)."""
    from mobilebert import atomic

    path = Path(path)
    with atomic.disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
