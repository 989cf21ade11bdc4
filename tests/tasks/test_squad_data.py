"""SQuAD reading and checking, windowed features, and answer extraction."""

import json

import numpy as np
import pytest

from mobilebert.tasks import metrics
from mobilebert.errors import DataError
from mobilebert.tasks import squad
from mobilebert.tokenizer import Tokenizer

from helpers import CONTEXT, _answer, squad_json

def _dump(tmp_path, obj, name="dev.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(vocab_file):
    return Tokenizer.from_file(vocab_file)


def test_read_v1_and_v2(tmp_path):
    v1 = squad.read_squad(_dump(tmp_path, squad_json()), is_training=True)
    assert [e.qid for e in v1.examples] == ["q1", "q2", "q3"] and not v1.version_2
    assert v1.examples[0].line_no > 1 and len(v1.examples[1].answers) == 2
    v2 = squad.read_squad(_dump(tmp_path, squad_json("v2.0")))
    assert v2.version_2 and v2.examples[3].is_impossible and v2.examples[3].answers == []
    assert metrics.squad_v2_evaluate(v2.as_dataset(), {"q1": "Denver Broncos", "q2": "Levi's Stadium",
                                                       "q3": "24-10", "q4": ""})["exact"] == 75.0


@pytest.mark.parametrize("qa, message", [
    ({"id": "bad1", "question": "Q?", "answers": [{"text": "Denver", "answer_start": 3}]},
     "answer 0 'Denver' does not match the context at offset 3"),
    ({"id": "bad2", "question": "  ", "answers": [_answer("Denver")]}, "empty question"),
    ({"id": "q1", "question": "Again?", "answers": [_answer("Denver")]}, "duplicate question id"),
    ({"id": "bad3", "question": "Q?", "answers": [{"text": "Denver"}]}, "no integer answer_start"),
    ({"id": "bad4", "question": "Q?", "answers": []}, "no answer"),
])
def test_bad_questions(tmp_path, qa, message):
    path = _dump(tmp_path, squad_json(extra_qas=[qa]))
    lines = path.read_text().splitlines()
    line = [i for i, s in enumerate(lines, 1) if f'"{qa["id"]}"' in s][-1]
    with pytest.raises(DataError) as err:
        squad.read_squad(path, is_training=True)
    assert f"{path}:{line}: question {qa['id']}" in str(err.value) and message in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1"):
        data = squad.read_squad(path, is_training=True, on_bad_row="skip")
    assert len(data.examples) == 3 and data.skipped == 1


def test_offset_mismatch_in_an_eval_file_is_kept_with_a_warning(tmp_path):
    qa = {"id": "off", "question": "Q?", "answers": [_answer("Denver"), {"text": "Denver", "answer_start": 3}]}
    path = _dump(tmp_path, squad_json(extra_qas=[qa]))
    with pytest.warns(UserWarning, match=r"1 question\(s\) with answer offsets .* question off .*answer 1 'Denver'"):
        data = squad.read_squad(path, is_training=False)
    assert [e.qid for e in data.examples][-1] == "off" and data.skipped == 0


def test_question_without_context_and_bad_json(tmp_path):
    obj = squad_json()
    obj["data"][0]["paragraphs"].append({"context": "", "qas": [{"id": "n1", "question": "Q?", "answers": []}]})
    with pytest.raises(DataError, match=r"question n1 .*: no context"):
        squad.read_squad(_dump(tmp_path, obj))
    bad = tmp_path / "broken.json"
    bad.write_text('{"data": [\n  {"paragraphs": ]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.json:2: not valid JSON"):
        squad.read_squad(bad)
    with pytest.raises(DataError, match="\"data\" list"):
        squad.read_squad(_dump(tmp_path, {"version": "1.1"}, "nodata.json"))


def test_windows_follow_bert_doc_stride():
    assert squad._windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert squad._windows(3, 4, 3) == [(0, 3)]
    assert squad._windows(0, 4, 3) == [(0, 0)]


def test_features_map_answers_back_to_text(tmp_path, tok):
    data = squad.read_squad(_dump(tmp_path, squad_json("v2.0")), is_training=True)
    long_q = squad.SquadExample("q5", "why " * 40, CONTEXT, [_answer("Carolina Panthers")])
    examples = data.examples + [long_q]
    feats = squad.build_features(examples, tok, max_seq_length=48, doc_stride=16, max_query_length=12,
                                 is_training=True)
    by_ex = {}
    for f in feats:
        by_ex.setdefault(f.example_index, []).append(f)
        assert len(f.input_ids) <= 48 and len(f.input_ids) == len(f.token_type_ids) == len(f.offsets)
        assert f.input_ids[0] == tok.cls_id and f.input_ids[-1] == tok.sep_id
        n_q = f.token_type_ids.index(1) - 2
        assert n_q <= 12
        if f.start_position:
            s, e = f.offsets[f.start_position][0], f.offsets[f.end_position][1]
            assert CONTEXT[s:e] == examples[f.example_index].answers[0]["text"]
    assert len(by_ex[4][0].input_ids) == 48 and by_ex[4][0].token_type_ids.index(1) == 14  # question cut to 12
    for i, ex in enumerate(examples):
        fs = by_ex[i]
        assert len(fs) > 1                               # the context needs several windows
        if ex.is_impossible:
            assert all(f.start_position == f.end_position == 0 for f in fs)
        else:
            assert any(f.start_position for f in fs)
        # Each context token is "max context" in exactly one window.
        counts = {}
        for f in fs:
            for off, is_max in zip(f.offsets, f.token_is_max_context):
                if off is not None:
                    counts[off] = counts.get(off, 0) + int(is_max)
        assert set(counts.values()) == {1}


def _logits_for(features, targets, examples, noise=0.0, seed=0):
    """Peaked logits at the gold span of every window that holds it, else at [CLS]."""
    rng = np.random.default_rng(seed)
    starts, ends = [], []
    for f in features:
        n = len(f.input_ids) + 3  # padded, as a batch would be
        s, e = rng.normal(scale=noise, size=n), rng.normal(scale=noise, size=n)
        text = targets.get(examples[f.example_index].qid)
        hit = [(a, b) for a in range(len(f.offsets)) for b in range(a, len(f.offsets))
               if f.offsets[a] and f.offsets[b] and text
               and CONTEXT[f.offsets[a][0]:f.offsets[b][1]] == text and f.token_is_max_context[a]]
        if hit:
            s[hit[0][0]] += 10
            e[hit[0][1]] += 10
        else:
            s[0] += 5
            e[0] += 5
        starts.append(s)
        ends.append(e)
    return starts, ends


def test_postprocess_v1_and_v2(tmp_path, tok):
    data = squad.read_squad(_dump(tmp_path, squad_json("v2.0")))
    feats = squad.build_features(data.examples, tok, max_seq_length=64, doc_stride=24, max_query_length=16)
    targets = {"q1": "Denver Broncos", "q2": "Santa Clara, California", "q3": "24\u201310"}
    s, e = _logits_for(feats, targets, data.examples, noise=0.1)
    preds, odds, nbest = squad.postprocess(data.examples, feats, s, e, version_2=True)
    assert preds == {**targets, "q4": ""}
    assert odds["q4"] > 0 > odds["q1"]
    # n-best plus the null answer (run_squad.py appends it when it did not make the n-best).
    assert all(len(v) <= 21 and len({x["text"] for x in v}) == len(v) for v in nbest.values())
    assert abs(sum(x["probability"] for x in nbest["q1"]) - 1) < 1e-9
    assert metrics.squad_v2_evaluate(data.as_dataset(), preds, odds)["exact"] == 100.0
    # A threshold above every null-odds value answers every question.
    preds_hi, _, _ = squad.postprocess(data.examples, feats, s, e, version_2=True, null_score_diff_threshold=1e9)
    assert preds_hi["q4"] != "" and preds_hi["q1"] == "Denver Broncos"
    # v1.1 never predicts the empty answer; max_answer_length=2 rules out the 3-token "Santa Clara, California".
    p1, odds1, _ = squad.postprocess(data.examples, feats, s, e, max_answer_length=2)
    assert odds1 == {} and all(p1.values()) and p1["q1"] == "Denver Broncos" and p1["q2"] != targets["q2"]
    assert len(tok.tokenize(p1["q2"])) <= 2
    out = squad.write_json(preds, tmp_path / "out" / "predictions.json")
    assert json.loads(out.read_text(encoding="utf-8")) == preds


def test_postprocess_with_no_valid_span(tok):
    # No span can pass max_answer_length=0: run_squad.py's "empty" placeholder, never a crash.
    ex = [squad.SquadExample("z", "Q?", "Some words.", [])]
    feats = squad.build_features(ex, tok, max_seq_length=16, doc_stride=8, max_query_length=4)
    logits = [np.zeros(len(feats[0].input_ids))]
    preds, odds, nbest = squad.postprocess(ex, feats, logits, logits, max_answer_length=0)
    assert preds == {"z": "empty"} and odds == {}
    preds, odds, _ = squad.postprocess(ex, feats, logits, logits, max_answer_length=0, version_2=True)
    assert preds == {"z": ""} and odds["z"] == squad.NO_SPAN_ODDS
