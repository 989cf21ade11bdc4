"""Hostile inputs to the CLI (issue 10, items 5, 6 and 8): each ends with exit status 2, ONE line on stderr
naming the file, key or line, no traceback, and nothing written. Real GLUE data and the real BERT vocabulary
come from shared/data; broken files are made in tmp_path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from mobilebert import get_config
from mobilebert.cli import main
from mobilebert.heads import MobileBertForPreTraining, MobileBertForSequenceClassification


def refused(capsys, argv, *needles) -> str:
    """Run the CLI; require exit 2 and exactly one stderr line that names every needle."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"mobilebert {argv[0]}: error: "), err
    for n in needles:
        assert str(n) in lines[0], (n, err)
    return lines[0]


@pytest.fixture(scope="module")
def glue(data_dir):
    return data_dir / "glue"


def _saved(cls, tmp_path_factory, vocab_file, name):
    folder = tmp_path_factory.mktemp(name)
    cls(get_config("debug-mobilebert")).save_pretrained(folder)
    shutil.copyfile(vocab_file, folder / "vocab.txt")
    return folder


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, vocab_file):
    """A saved sequence classifier with its vocabulary, as `finetune` leaves one in RUN/best."""
    return _saved(MobileBertForSequenceClassification, tmp_path_factory, vocab_file, "clf")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, vocab_file):
    """A pre-trained (MLM + NSP) checkpoint: no classification head."""
    return _saved(MobileBertForPreTraining, tmp_path_factory, vocab_file, "pre")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, vocab_file):
    """A small prepared pre-training folder."""
    root = tmp_path_factory.mktemp("shards")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(f"Sentence {i} of document {d} is about the weather." for i in range(6))
                                  for d in range(8)) + "\n", encoding="utf-8")
    out = root / "prepared"
    assert main(["data", "prepare", str(corpus), "--vocab", str(vocab_file), "--out", str(out), "--workers", "1",
                 "--quiet"]) == 0
    return out


# --------------------------------------------------------------- 5: output paths, damaged shards, batch size


def test_vocab_train_out_is_a_file(tmp_path, capsys, glue):
    out = tmp_path / "taken"
    out.write_text("keep me")
    refused(capsys, ["vocab", "train", glue / "SST-2" / "dev.tsv", "--out", out, "--vocab-size", "100"], out)
    assert out.read_text() == "keep me"


def test_evaluate_out_is_a_file(tmp_path, capsys, classifier, glue):
    out = tmp_path / "taken"
    out.write_text("keep me")
    refused(capsys, ["evaluate", classifier, "data.task=sst-2", f"data.dir={glue}", "data.max_eval_examples=4",
                     "--out", out], "--out", out)
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_export_out_is_a_folder_or_under_a_file(tmp_path, capsys, classifier, where):
    if where == "folder":
        out = tmp_path / "m.onnx"
        out.mkdir()
    else:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "m.onnx"
    refused(capsys, ["export", "onnx", classifier, "--out", out], "--out", out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name if where == "folder" else "file"]


def test_finetune_out_is_a_file(tmp_path, capsys, glue, vocab_file):
    out = tmp_path / "run"
    out.write_text("keep me")
    refused(capsys, ["finetune", "data.task=wnli", f"data.dir={glue}", f"model.tokenizer={vocab_file}",
                     f"out={out}"], "out", out)
    assert out.read_text() == "keep me"


def _damage(folder, how):
    sent, docs = folder / "shard-00000.sentences.npy", folder / "shard-00000.documents.npy"
    if how == "truncated":
        data = sent.read_bytes()
        sent.write_bytes(data[:len(data) // 2])
        return sent
    if how == "wrong_dtype":
        np.save(docs, np.load(docs).astype(np.float32))
        return docs
    if how == "garbage":
        docs.write_bytes(np.random.default_rng(0).bytes(300))
        return docs
    if how == "wrong_length":
        np.save(docs, np.load(docs)[:-1])
        return docs
    if how in ("manifest_field", "special_ids", "counts"):
        m = json.loads((folder / "manifest.json").read_text())
        if how == "manifest_field":
            del m["shards"][0]["tokens"]
        elif how == "special_ids":
            m["special_ids"]["mask"] += 1
        else:
            m["counts"] = None
        (folder / "manifest.json").write_text(json.dumps(m))
        return folder / "manifest.json"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "wrong_dtype", "garbage", "wrong_length", "manifest_field",
                                 "special_ids", "counts"])
def test_damaged_shards_are_one_line(tmp_path, capsys, shards, how):
    folder = tmp_path / "prepared"
    shutil.copytree(shards, folder)
    bad = _damage(folder, how)
    refused(capsys, ["data", "inspect", folder, "-n", "1"], bad, "damaged")


def test_predict_batch_size_zero(tmp_path, capsys, classifier):
    inputs = tmp_path / "in.txt"
    inputs.write_text("a fine film\na dull film\n")
    out = tmp_path / "pred.jsonl"
    refused(capsys, ["predict", classifier, "--file", inputs, "--batch-size", "0", "--out", out], "--batch-size")
    assert not out.exists()


def test_predict_out_is_a_folder(tmp_path, capsys, classifier):
    inputs = tmp_path / "in.txt"
    inputs.write_text("a fine film\n")
    refused(capsys, ["predict", classifier, "--file", inputs, "--out", tmp_path], "--out", tmp_path)


# --------------------------------------------------------------- 6: silent wrong results


def test_duplicated_vocab_token_is_refused_with_its_line(tmp_path, capsys, vocab_file, glue):
    tokens = vocab_file.read_text(encoding="utf-8").splitlines()
    dup = tmp_path / "dup.txt"
    dup.write_text("\n".join(tokens[:2000] + ["the"] + tokens[2000:]) + "\n", encoding="utf-8")
    out = tmp_path / "prepared"
    refused(capsys, ["data", "prepare", glue / "RTE" / "dev.tsv", "--vocab", dup, "--out", out, "--quiet"],
            f"{dup}:2001", "'the'", f"line {tokens.index('the') + 1}")
    assert not out.exists()


@pytest.mark.parametrize("which", ["vocab.txt", "tokenizer.json"])
def test_shard_vocabulary_is_checked_against_its_manifest(tmp_path, capsys, shards, which):
    folder = tmp_path / "prepared"
    shutil.copytree(shards, folder)
    if which == "vocab.txt":
        lines = (folder / which).read_text(encoding="utf-8").splitlines()
        del lines[500]   # every id from 500 on would be off by one against the shards
        (folder / which).write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        tok = json.loads((folder / which).read_text(encoding="utf-8"))
        vocab = tok["model"]["vocab"]
        a, b = "the", "of"
        vocab[a], vocab[b] = vocab[b], vocab[a]   # two ids swapped: same size, different vocabulary
        (folder / which).write_text(json.dumps(tok), encoding="utf-8")
    refused(capsys, ["data", "inspect", folder, "-n", "1"], folder / which, "not the vocabulary")


def test_vocabulary_far_smaller_than_the_model_is_refused(tmp_path, capsys, classifier, vocab_file, glue):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(classifier, ckpt)
    (ckpt / "vocab.txt").write_text("\n".join(vocab_file.read_text().splitlines()[:200]) + "\n")
    refused(capsys, ["evaluate", ckpt, "data.task=sst-2", f"data.dir={glue}", "data.max_eval_examples=8"],
            glue / "SST-2" / "dev.tsv", "[UNK]", ckpt / "vocab.txt")
    refused(capsys, ["predict", ckpt, "a gripping, beautifully made film"], "[UNK]", ckpt / "vocab.txt")


def test_evaluate_and_predict_refuse_a_random_task_head(tmp_path, capsys, pretrained, glue):
    out = tmp_path / "eval"
    refused(capsys, ["evaluate", pretrained, "data.task=sst-2", f"data.dir={glue}", "data.max_eval_examples=8",
                     "--out", out], pretrained, "classification head")
    assert not out.exists()
    refused(capsys, ["predict", pretrained, "a gripping film"], pretrained, "classification head")


def _drop_tensors(src, dst, prefix):
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith(prefix)}, dst / "model.safetensors",
              metadata={"format": "pt"})
    return dst


def test_heads_a_checkpoint_holds(tmp_path, classifier, pretrained):
    from mobilebert.checkpoint import checkpoint_heads, missing_heads

    assert checkpoint_heads(pretrained) == {"mlm", "nsp"}
    assert checkpoint_heads(classifier) == {"classifier"}
    assert missing_heads(classifier, {"mlm"}) == {"mlm"} and missing_heads(pretrained, {"mlm", "nsp"}) == set()
    headless = _drop_tensors(classifier, tmp_path / "headless", "classifier.")
    assert checkpoint_heads(headless) == set()


def test_quantize_refuses_a_classifier_config_without_classifier_weights(tmp_path, capsys, classifier, glue):
    headless = _drop_tensors(classifier, tmp_path / "headless", "classifier.")
    out = tmp_path / "q.onnx"
    refused(capsys, ["quantize", headless, "--task", "sst-2", "--data", glue, "--out", out],
            headless, "classification head")
    assert not out.exists()


def test_train_takes_a_classifier_teacher_without_its_random_mlm_head(tmp_path, capsys):
    """A fine-tuned classifier as teacher: its MLM head was never trained, so no logit distillation (issue 10
    item 6, issue 11 item 1): the run says so instead of distilling random logits."""
    from mobilebert.cli import main

    teacher = tmp_path / "teacher"
    MobileBertForSequenceClassification(get_config("debug-ibbert")).save_pretrained(teacher)
    out = tmp_path / "run"
    assert main(["train", "configs/tiny-test.yaml", "run.stages=[kt,pd]", f"teacher.init={teacher}",
                 "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "teacher heads: none (no MLM head: no logit distillation" in printed
    assert not out.exists()


def test_finetune_refuses_a_teacher_without_its_task_head(tmp_path, capsys, classifier, glue, vocab_file):
    teacher = _drop_tensors(classifier, tmp_path / "teacher", "classifier.")
    out = tmp_path / "run"
    refused(capsys, ["finetune", "data.task=wnli", f"data.dir={glue}", f"model.tokenizer={vocab_file}",
                     f"distill.teacher={teacher}", f"out={out}"], "distill.teacher", teacher, "classification head")
    assert not out.exists()


def _stsb(tmp_path, glue, score):
    lines = (glue / "STS-B" / "dev.tsv").read_text(encoding="utf-8").splitlines()[:6]
    cols = lines[3].split("\t")
    cols[-1] = score
    lines[3] = "\t".join(cols)
    dev = tmp_path / "dev.tsv"
    dev.write_text("\n".join(lines) + "\n", encoding="utf-8")
    preds = tmp_path / "pred.tsv"
    ids = [line.split("\t")[0] for line in lines[1:]]
    preds.write_text("index\tprediction\n" + "".join(f"{i}\t2.5\n" for i in ids))
    return dev, preds


@pytest.mark.parametrize("score", ["7.5", "-0.5"])
def test_stsb_score_outside_0_5(tmp_path, capsys, glue, score):
    dev, preds = _stsb(tmp_path, glue, score)
    out = tmp_path / "metrics.json"
    refused(capsys, ["score", "glue", "STS-B", dev, preds, "--out", out], f"{dev}:4", score, "0-5")
    assert not out.exists()


def _squad(tmp_path, qas):
    dev = tmp_path / "dev-v2.0.json"
    dev.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": [
        {"context": "The Denver Broncos won Super Bowl 50.", "qas": qas}]}]}, indent=1), encoding="utf-8")
    preds = tmp_path / "pred.json"
    preds.write_text(json.dumps({q["id"]: "" for q in qas}))
    return dev, preds


def test_squad_impossible_question_with_answers(tmp_path, capsys):
    from mobilebert.errors import DataError
    from mobilebert.tasks.squad import read_squad

    dev, preds = _squad(tmp_path, [
        {"id": "q1", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 4}]},
        {"id": "q2", "question": "Who lost?", "is_impossible": True,
         "answers": [{"text": "Denver Broncos", "answer_start": 4}]}])
    line = next(i for i, t in enumerate(dev.read_text().splitlines(), 1) if '"q2"' in t)
    refused(capsys, ["score", "squad", dev, preds], f"{dev}:{line}", "q2", "is_impossible")
    with pytest.raises(DataError, match=f"{dev.name}:{line}: question q2 .*is_impossible"):
        read_squad(dev, is_training=True)


def test_squad_duplicate_ids_in_score(tmp_path, capsys):
    dev, preds = _squad(tmp_path, [
        {"id": "q1", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 4}]},
        {"id": "q1", "question": "What was won?", "answers": [{"text": "Super Bowl 50", "answer_start": 23}]}])
    second = [i for i, t in enumerate(dev.read_text().splitlines(), 1) if '"q1"' in t][1]
    refused(capsys, ["score", "squad", dev, preds], f"{dev}:{second}", "q1", "twice")


def test_vocab_train_refuses_binary_files_as_data_prepare_does(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("plain words here\n" * 50, encoding="utf-8")
    (corpus / "b.bin").write_bytes(bytes(range(256)) * 20)
    out = tmp_path / "vocab"
    refused(capsys, ["vocab", "train", corpus, "--out", out, "--vocab-size", "100"], corpus / "b.bin", "binary")
    assert not out.exists()


def test_vocab_train_decodes_latin1_as_data_prepare_does(tmp_path, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("le café crème est très chaud\n".encode("latin-1") * 40)
    out = tmp_path / "vocab"
    assert main(["vocab", "train", str(latin), "--out", str(out), "--vocab-size", "100", "--min-frequency", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"{latin}: 40 lines not UTF-8, decoded as cp1252" in printed
    tokens = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert "\ufffd" not in "".join(tokens)      # the old reader replaced é with U+FFFD
    assert "cafe" in tokens or "caf" in tokens and "##e" in tokens   # BERT lower-casing strips the accent


def test_predict_refuses_empty_input(capsys, classifier):
    refused(capsys, ["predict", classifier, ""], "empty")
    refused(capsys, ["predict", classifier, "a film", "   "], "empty")


# --------------------------------------------------------------- 8: vague messages


@pytest.mark.parametrize("content", ["", "a\nb\nc\n"])
def test_vocabulary_without_special_tokens_names_the_file(tmp_path, capsys, glue, content):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(content)
    refused(capsys, ["data", "prepare", glue / "RTE" / "dev.tsv", "--vocab", vocab, "--out", tmp_path / "o"],
            vocab, "empty vocabulary" if not content else "[PAD]")


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_malformed_jsonl_line_is_named(tmp_path, capsys, vocab_file, policy):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a fine film", "label": "pos"}\n{"text": "dull", "label": neg}\n'
                     '{"text": "great", "label": "pos"}\n', encoding="utf-8")
    refused(capsys, ["finetune", "data.task=custom", f"data.train_file={train}", "data.text_a=text",
                     "data.label=label", f"data.on_bad_row={policy}", f"model.tokenizer={vocab_file}",
                     f"out={tmp_path / 'run'}"], f"{train}:2", "malformed JSON")
    assert not (tmp_path / "run").exists()


def test_missing_model_init_is_named(tmp_path, capsys, glue):
    missing = tmp_path / "no-such-checkpoint"
    refused(capsys, ["finetune", "data.task=wnli", f"data.dir={glue}", f"model.init={missing}",
                     f"out={tmp_path / 'run'}"], "model.init", missing)


# --------------------------------------------------------------- the same classes, other commands


def test_export_refuses_a_head_the_checkpoint_lacks(tmp_path, capsys, pretrained):
    out = tmp_path / "m.onnx"
    refused(capsys, ["export", "onnx", pretrained, "--task", "MobileBertForSequenceClassification", "--out", out],
            "--task MobileBertForSequenceClassification", pretrained, "classification head")
    assert not out.exists()


def test_score_refuses_non_finite_regression_predictions(tmp_path, capsys, glue):
    dev, preds = _stsb(tmp_path, glue, "3.0")
    lines = preds.read_text().splitlines()
    lines[2] = lines[2].split("\t")[0] + "\tnan"
    preds.write_text("\n".join(lines) + "\n")
    refused(capsys, ["score", "glue", "STS-B", dev, preds], f"{preds}:3", "finite")


@pytest.mark.parametrize("argv", [["--vocab-size", "1000000000"], ["--vocab-size", "5"], ["--min-frequency", "-1"]])
def test_vocab_train_out_of_range_options(tmp_path, capsys, glue, argv):
    out = tmp_path / "vocab"
    refused(capsys, ["vocab", "train", glue / "RTE" / "dev.tsv", "--out", out, *argv], argv[0])
    assert not out.exists()


def test_empty_corpus_for_vocab_train(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    refused(capsys, ["vocab", "train", tmp_path / "empty.txt", "--out", tmp_path / "vocab"], "empty")
    assert not (tmp_path / "vocab").exists()


def test_custom_task_label_listed_twice(tmp_path, capsys, vocab_file):
    train = tmp_path / "train.csv"
    train.write_text("id,text,label\n1,good film,pos\n2,bad film,neg\n")
    refused(capsys, ["finetune", "data.task=custom", f"data.train_file={train}", "data.text_a=text",
                     "data.labels=[pos,pos]", f"model.tokenizer={vocab_file}", f"out={tmp_path / 'run'}"],
            "data.labels", "twice")
    assert not (tmp_path / "run").exists()


def test_quantize_out_is_a_folder(tmp_path, capsys, classifier, glue):
    out = tmp_path / "q.onnx"
    out.mkdir()
    refused(capsys, ["quantize", classifier, "--task", "sst-2", "--eval-file", glue / "SST-2" / "dev.tsv",
                     "--eval-samples", "8", "--out", out], "--out", out)
    assert [p.name for p in tmp_path.iterdir()] == ["q.onnx"]   # no staged file left beside it


def test_model_tokenizer_must_be_the_vocabulary_saved_with_model_init(tmp_path, capsys, classifier, glue,
                                                                       vocab_file):
    other = tmp_path / "other.txt"
    tokens = vocab_file.read_text(encoding="utf-8").splitlines()
    tokens[1000], tokens[1001] = tokens[1001], tokens[1000]   # same size, two ids swapped
    other.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    refused(capsys, ["finetune", "data.task=wnli", f"data.dir={glue}", f"model.init={classifier}",
                     f"model.tokenizer={other}", f"out={tmp_path / 'run'}"], "model.tokenizer", other, "id 1000")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("how", ["vocab", "wrong_dtype"])
def test_train_checks_a_shards_folder_before_writing(tmp_path, capsys, shards, how):
    folder = tmp_path / "prepared"
    shutil.copytree(shards, folder)
    if how == "vocab":
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        (folder / "vocab.txt").write_text("\n".join(lines[:100] + lines[101:]) + "\n", encoding="utf-8")
        (folder / "tokenizer.json").unlink()
        bad = folder / "vocab.txt"
    else:
        bad = _damage(folder, how)
    out = tmp_path / "run"
    refused(capsys, ["train", "configs/tiny-test.yaml", "run.stages=[teacher]", "data.corpus=[]",
                     f"data.shards={folder}", "--out", out], bad)
    assert not out.exists()


@pytest.mark.parametrize("data, needle", [
    ([1, 2], 'data[0] has no "paragraphs"'),
    ([{"paragraphs": [5]}], 'data[0].paragraphs[0] has no "qas"'),
    ([{"paragraphs": [{"context": "x", "qas": [{"id": ["a"], "question": "q", "answers": []}]}]}], '"id"'),
    ([{"paragraphs": [{"context": "x", "qas": [{"id": "a", "question": "q", "answers": "x"}]}]}], '"answers"'),
])
def test_score_squad_malformed_gold_structure(tmp_path, capsys, data, needle):
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps({"version": "1.1", "data": data}))
    preds = tmp_path / "pred.json"
    preds.write_text('{"a": "x"}')
    refused(capsys, ["score", "squad", dev, preds], dev, needle)


def test_export_vocab_must_be_the_checkpoints_own(tmp_path, capsys, classifier, vocab_file):
    other = tmp_path / "other.txt"
    tokens = vocab_file.read_text(encoding="utf-8").splitlines()
    other.write_text("\n".join(tokens[:-10]) + "\n", encoding="utf-8")
    out = tmp_path / "m.onnx"
    refused(capsys, ["export", "onnx", classifier, "--vocab", other, "--out", out], "--vocab", other)
    assert not out.exists()
