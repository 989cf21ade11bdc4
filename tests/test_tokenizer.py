"""Tokenizer: BERT WordPiece from vocab.txt / tokenizer.json, pairs, truncation, vocab training."""

import subprocess
import sys

import pytest
import transformers as hf

from mobilebert.tokenizer import Tokenizer, TokenizerError, train_wordpiece

TEXTS = ["Hello, World! MobileBERT runs on-device.", "unaffable preprocessing of naïve text", "a " * 300]


def test_matches_transformers_bert_tokenizer(vocab_file, tmp_path):
    ours = Tokenizer.from_file(vocab_file)
    # transformers 5.x ignores BertTokenizer(vocab_file=...) (it builds an empty vocabulary), so the
    # reference loads the folder, which it does honour.
    (tmp_path / "vocab.txt").write_bytes(vocab_file.read_bytes())
    ref = hf.BertTokenizer.from_pretrained(tmp_path)
    assert len(ref) == 30522
    assert ours.vocab_size == 30522
    for t in TEXTS:
        assert ours.tokenize(t) == ref.tokenize(t)
        assert ours.encode(t, max_length=None).input_ids == ref(t)["input_ids"]
    pair = ours.encode(TEXTS[0], TEXTS[1])
    want = ref(TEXTS[0], TEXTS[1])
    assert pair.input_ids == want["input_ids"] and pair.token_type_ids == want["token_type_ids"]


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_truncation_strategies(vocab_file, strategy):
    tok = Tokenizer.from_file(vocab_file)
    long, short = "word " * 100, "tiny text"
    a, b = (long, short) if strategy != "only_second" else (short, long)
    enc = tok.encode(a, b, max_length=32, truncation=strategy)
    assert len(enc.input_ids) == 32
    assert enc.input_ids[0] == tok.cls_id and enc.input_ids[-1] == tok.sep_id
    n_b = sum(enc.token_type_ids)
    if strategy == "only_first":
        assert n_b == len(tok.tokenize(short)) + 1  # B untouched
    if strategy == "only_second":
        assert enc.token_type_ids.count(0) == len(tok.tokenize(short)) + 2  # A untouched


def test_batch_tensors_and_padding(vocab_file):
    tok = Tokenizer.from_file(vocab_file)
    batch = tok(["short", "a somewhat longer sentence here"], max_length=16)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    assert tok(["x"], max_length=16, padding="max_length")["input_ids"].shape == (1, 16)


def test_bad_files(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.txt")
    (tmp_path / "v.txt").write_text("a\nb\n")
    with pytest.raises(TokenizerError, match=r"\[PAD\]"):
        Tokenizer.from_file(tmp_path / "v.txt")
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="t.json"):
        Tokenizer.from_file(tmp_path / "t.json")
    with pytest.raises(TokenizerError, match="neither"):
        Tokenizer.from_file(tmp_path / ".")


def test_save_and_reload(tmp_path, vocab_file):
    tok = Tokenizer.from_file(vocab_file)
    tok.save(tmp_path)
    again = Tokenizer.from_file(tmp_path)
    assert again.encode(TEXTS[0]).input_ids == tok.encode(TEXTS[0]).input_ids
    assert (tmp_path / "vocab.txt").read_text() == vocab_file.read_text()


def test_train_vocab_and_cli(tmp_path, data_dir):
    files = [str(data_dir / "corpus" / "gutenberg" / "blake-poems.txt"),
             str(data_dir / "corpus" / "inaugural" / "2005-Bush.txt")]  # the second is Latin-1
    tok = train_wordpiece(files, vocab_size=800)
    assert 500 < tok.vocab_size <= 800
    enc = tok.encode("The tyger burning bright")
    assert enc.input_ids[0] == tok.cls_id and tok.unk_id not in enc.input_ids[1:-1]
    out = tmp_path / "vocab"
    r = subprocess.run([sys.executable, "-m", "mobilebert", "vocab", "train", *files, "--vocab-size", "600",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "vocab.txt").is_file() and (out / "tokenizer.json").is_file()
    assert Tokenizer.from_file(out).vocab_size <= 600
    r = subprocess.run([sys.executable, "-m", "mobilebert", "vocab", "train", str(tmp_path / "nope.txt"),
                        "--out", str(tmp_path / "v2")], capture_output=True, text=True)
    assert r.returncode == 2 and "nope.txt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "v2").exists()
