"""GLUE / custom task readers: real files, the MNLI/QQP/QNLI layouts, bad rows, submission files."""

import json
import sys
import types

import pytest

from mobilebert.errors import DataError, UserError
from mobilebert.tasks import glue, hub
from mobilebert.tasks.glue import custom_task, get_task, read_examples, task_file, write_submission

# (train, dev, test) rows, from shared/data/MANIFEST.md.
COUNTS = {"CoLA": (8551, 1043, 1063), "SST-2": (67349, 872, 1821), "MRPC": (3668, 408, 1725),
          "RTE": (2490, 277, 3000), "STS-B": (5749, 1500, 1379), "WNLI": (635, 71, 146)}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_glue_files(data_dir, name):
    task = get_task(name)
    for split, expected in zip(("train", "dev", "test"), COUNTS[name]):
        res = read_examples(task, task_file(task, data_dir / "glue", split), split)
        assert len(res.examples) == expected and res.skipped == 0
        assert len({e.guid for e in res.examples}) == expected
        for e in res.examples[:50] + res.examples[-5:]:
            assert e.text_a.strip() and (e.text_b is None) == (task.text_b is None)
            if split == "test":
                assert e.label is None
            elif task.is_regression:
                assert isinstance(e.label, float) and 0.0 <= e.label <= 5.0
            else:
                assert e.label in task.labels
    # Test guids are the index column GLUE's server matches on: 0..n-1 here.
    assert [e.guid for e in res.examples[:3]] == ["0", "1", "2"]


def test_glue_quirks(data_dir):
    cola = read_examples(get_task("cola"), data_dir / "glue/CoLA/dev.tsv", "dev").examples
    assert cola[-1].line_no == 1043 and cola[-1].text_a.endswith("himself.")  # no trailing newline
    mrpc = read_examples(get_task("mrpc"), data_dir / "glue/MRPC/dev.tsv", "dev").examples
    assert mrpc[0].line_no == 2 and mrpc[0].label == "1"      # BOM header parsed, quotes kept as text
    assert mrpc[0].text_b.startswith('" The foodservice')
    sts = read_examples(get_task("STS-B"), data_dir / "glue/STS-B/dev.tsv", "dev").examples
    assert sts[0].label == 5.0 and sts[1].label == 4.75


def test_task_lookup():
    assert get_task("sst2") is get_task("SST-2") is get_task("sst_2")
    assert get_task("mnli-mm").name == "MNLI" and get_task("STSB").is_regression
    assert get_task("mnli").num_labels == 3 and get_task("stsb").num_labels == 1
    assert len(glue.GLUE_TASKS) == 9
    with pytest.raises(UserError, match="unknown GLUE task"):
        get_task("squad")


def _write(path, lines, newline="\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return path


MNLI_HEAD = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2")


def test_download_glue_layout_for_missing_tasks(tmp_path):
    root = tmp_path / "glue"
    p = "( x )\t( y )\t(ROOT x)\t(ROOT y)"
    _write(root / "MNLI/train.tsv", [MNLI_HEAD + "\tlabel1\tgold_label",
                                     f'0\t1\t1e\tgov\t{p}\tHe said "hi.\tHe spoke.\tentailment\tentailment'])
    _write(root / "MNLI/dev_matched.tsv", [MNLI_HEAD + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
                                           f"7\t1\t1n\tgov\t{p}\tA.\tB.\tneutral\tneutral\tneutral\tx\tx\tneutral"])
    _write(root / "MNLI/dev_mismatched.tsv", [MNLI_HEAD + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
                                              f"3\t1\t1c\tfic\t{p}\tC.\tD.\tc\tc\tc\tc\tc\tcontradiction"])
    _write(root / "MNLI/test_matched.tsv", [MNLI_HEAD, f"0\t1\t1\tgov\t{p}\tE.\tF."])
    _write(root / "MNLI/test_mismatched.tsv", [MNLI_HEAD, f"0\t1\t1\tfic\t{p}\tG.\tH."])
    mnli = get_task("MNLI")
    assert read_examples(mnli, task_file(mnli, root, "train"), "train").examples[0].text_a == 'He said "hi.'
    dev_m = read_examples(mnli, task_file(mnli, root, "dev"), "dev").examples  # "dev" -> dev_matched
    assert (dev_m[0].guid, dev_m[0].label) == ("7", "neutral")
    assert read_examples(mnli, task_file(mnli, root, "dev_mismatched"), "dev").examples[0].label == "contradiction"
    assert read_examples(mnli, task_file(mnli, root, "test_mismatched"), "test_mismatched").examples[0].text_b == "H."
    assert [s for s, _, _ in mnli.test_files] == ["test_matched", "test_mismatched"]

    _write(root / "QQP/train.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                                    "0\t1\t2\tHow?\tWhy?\t0", "1\t3\t4\tWhat is it?\tWhat's it?\t1",
                                    "2\t5\t6\tA broken row without the second question\t0"])
    _write(root / "QQP/test.tsv", ["id\tquestion1\tquestion2", "0\tQ?\tR?"])
    qqp = get_task("qqp")
    with pytest.raises(DataError, match=r"QQP/train.tsv:4: has 5 columns, expected 6"):
        read_examples(qqp, task_file(qqp, root, "train"), "train")
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        res = read_examples(qqp, task_file(qqp, root, "train"), "train", on_bad_row="skip")
    assert [e.label for e in res.examples] == ["0", "1"] and res.skipped == 1 and "train.tsv:4" in res.problems[0]
    assert read_examples(qqp, task_file(qqp, root, "test"), "test").examples[0].text_b == "R?"

    _write(root / "QNLI/dev.tsv", ["index\tquestion\tsentence\tlabel", "0\tWho?\tHim.\tnot_entailment"])
    qnli = get_task("qnli")
    assert read_examples(qnli, task_file(qnli, root / "QNLI", "dev"), "dev").examples[0].label == "not_entailment"
    with pytest.raises(DataError, match="file not found"):
        task_file(get_task("rte"), root, "train")
    with pytest.raises(UserError, match="no split"):
        task_file(qnli, root, "dev_matched")


@pytest.mark.parametrize("row, message", [
    ("0\tA.\tB.\tentailment\textra", "has 5 columns, expected 4"),
    ("0\tA.\tB.\tmaybe", "label 'maybe' is not one of entailment, not_entailment"),
    ("0\t \tB.\tentailment", "empty text"),
    ("0\tA.", "has 2 columns, expected 4"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "1\tOk.\tFine.\tentailment", row])
    with pytest.raises(DataError) as err:
        read_examples(get_task("rte"), path, "dev")
    assert f"{path}:3: {message}" in str(err.value) and "\n" not in str(err.value)
    with pytest.warns(UserWarning):
        res = read_examples(get_task("rte"), path, "dev", on_bad_row="skip")
    assert len(res.examples) == 1 and res.skipped == 1
    with pytest.raises(UserError, match="on_bad_row"):
        read_examples(get_task("rte"), path, "dev", on_bad_row="ignore")


def test_bad_scores_and_missing_columns(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    path = _write(tmp_path / "sts.tsv", [head, "0\tg\tf\ty\to\ts\ts\tA.\tB.\tfive"])
    with pytest.raises(DataError, match=r"sts.tsv:2: score 'five' is not a number"):
        read_examples(get_task("stsb"), path, "dev")
    path = _write(tmp_path / "sst.tsv", ["text\tlabel", "good\t1"])
    with pytest.raises(DataError, match=r"sst.tsv:1: no column 'sentence'"):
        read_examples(get_task("sst2"), path, "train")
    with pytest.raises(DataError, match="file not found"):
        read_examples(get_task("sst2"), tmp_path / "nope.tsv")


def test_custom_csv_tsv_jsonl(tmp_path):
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text('id,review,stars\nr1,"Great, really ""great""\nsecond line",pos\nr2,Bad,neg\n'
                        'r3,Meh,soso\n', encoding="utf-8")
    task = custom_task("reviews", text_a="review", label="stars", id_column="id", train_path=csv_path)
    assert task.labels == ("neg", "pos", "soso") and task.metrics == ("accuracy",)
    ex = read_examples(task, csv_path).examples
    assert ex[0].text_a == 'Great, really "great"\nsecond line' and ex[0].guid == "r1"
    assert [e.line_no for e in ex] == [2, 4, 5]        # a quoted newline spans two lines
    bin_task = custom_task("rev2", text_a="review", label="stars", labels=["neg", "pos"])
    assert bin_task.metrics == ("accuracy", "f1") and bin_task.positive_label == "pos"
    with pytest.raises(DataError, match=r"reviews.csv:5: label 'soso'"):
        read_examples(bin_task, csv_path)

    tsv = _write(tmp_path / "pairs.tsv", ["a\tb\ty", "x\ty\t0.5", "p\tq\t-1"])
    reg = custom_task("sim", text_a="a", text_b="b", label="y", regression=True)
    assert [e.label for e in read_examples(reg, tsv).examples] == [0.5, -1.0] and reg.is_regression
    noheader = _write(tmp_path / "nh.tsv", ["1\thello", "0\tbye"])
    nh = custom_task("nh", text_a=1, label=0, labels=["0", "1"], header=False)
    assert [e.label for e in read_examples(nh, noheader).examples] == ["1", "0"]

    jl = _write(tmp_path / "d.jsonl", [json.dumps({"q": "Is it?", "p": "Yes.", "label": 1}),
                                       json.dumps({"q": "No?", "p": "No.", "label": True}),
                                       "{broken", json.dumps({"q": "", "p": "x", "label": 0}),
                                       json.dumps({"q": "k", "p": "x", "label": 7})])
    jt = custom_task("j", text_a="q", text_b="p", labels=[0, 1])
    with pytest.warns(UserWarning, match="skipped 3"):
        res = read_examples(jt, jl, on_bad_row="skip")
    assert [e.label for e in res.examples] == ["1", "1"] and res.skipped == 3
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in res.problems] == ["3", "4", "5"]
    with pytest.raises(UserError, match="label list or a training file"):
        custom_task("x", text_a="q")
    with pytest.raises(UserError, match="at least 2 labels"):
        custom_task("x", text_a="q", labels=["only"])


def test_submission_files(tmp_path):
    mnli = get_task("mnli")
    path = write_submission(mnli, ["0", "1", "2"], [0, 2, "entailment"], tmp_path, "MNLI-mm")
    assert path.name == "MNLI-mm.tsv"
    assert path.read_text().splitlines() == ["index\tprediction", "0\tcontradiction", "1\tneutral", "2\tentailment"]
    path = write_submission(get_task("stsb"), ["0", "1"], [4.12345, 0.5], tmp_path)
    assert path.name == "STS-B.tsv" and path.read_text().splitlines()[1:] == ["0\t4.12345", "1\t0.5"]
    assert write_submission(get_task("cola"), ["0"], [1], tmp_path).read_text().endswith("0\t1\n")
    with pytest.raises(ValueError):
        write_submission(get_task("cola"), ["0"], [], tmp_path)


def test_read_hf_with_a_fake_datasets_module(monkeypatch):
    class Label:
        names = ["entailment", "neutral", "contradiction"]

    class FakeDS(list):
        features = {"label": Label()}

    def load_dataset(name, config, split):
        assert (name, config, split) == ("glue", "mnli", "validation_matched")
        return FakeDS([{"premise": "A.", "hypothesis": "B.", "label": 2, "idx": 5},
                       {"premise": "C.", "hypothesis": "D.", "label": -1, "idx": 6}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    res = hub.read_hf(get_task("mnli"), "dev_matched")
    assert [(e.guid, e.label) for e in res.examples] == [("5", "contradiction"), ("6", None)]
    monkeypatch.setitem(sys.modules, "datasets", None)   # import fails: a clear message, not a traceback
    with pytest.raises(UserError, match="pip install datasets"):
        hub.read_hf(get_task("sst2"), "train")
