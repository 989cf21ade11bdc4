"""Corpus reading and `mobilebert data prepare` (mobilebert/data/corpus.py, shards.py, cli/data.py).

Uses a small slice of the real shared corpus (one file is Latin-1) and checks the shards against an independent
reading of the text; bad inputs must fail with a one-line error naming the file and leave nothing behind.
"""

import gzip
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mobilebert.data import ShardedCorpus, load_manifest, prepare, read_documents, shards
from mobilebert.errors import DataError
from mobilebert.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
SLICE = ["corpus/inaugural/2005-Bush.txt", "corpus/inaugural/1789-Washington.txt", "corpus/state_union/1945-Truman.txt"]


@pytest.fixture(scope="module")
def tok(vocab_file):
    return Tokenizer.from_file(vocab_file)


@pytest.fixture
def slice_files(data_dir):
    return [data_dir / f for f in SLICE]


def reference_docs(files: list[Path], tok: Tokenizer) -> list[list[list[int]]]:
    """Independent reading: whole file, UTF-8 else Latin-1; BERT rules; token ids per non-empty line."""
    docs: list[list[list[int]]] = []
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        docs.append([])
        for line in text.split("\n"):
            if not line.strip():
                docs.append([])
            else:
                ids = tok.tokenize_ids([line.strip()])[0]
                if ids:
                    docs[-1].append(ids)
    return [d for d in docs if d]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_round_trip_boundaries_and_fallback(tmp_path, slice_files, vocab_file, tok):
    out = tmp_path / "shards"
    m = prepare(slice_files, vocab_file, out, workers=2, shard_tokens=3000)
    ref = reference_docs(slice_files, tok)
    corpus = ShardedCorpus(out)
    assert len(m["shards"]) > 1 and corpus.n_docs == len(ref) == m["counts"]["documents"]
    for d, doc in enumerate(ref):
        assert [s.tolist() for s in corpus.document(d)] == doc, f"document {d} differs"
    assert m["counts"]["tokens"] == sum(len(s) for doc in ref for s in doc)
    assert m["dtype"] == "uint16" and corpus.tokens[0].dtype == np.uint16
    # The Latin-1 file is reported, and decoded (not replaced with U+FFFD).
    assert [f["file"] for f in m["encoding_fallbacks"]] == [str(slice_files[0])]
    assert m["encoding_fallbacks"][0]["lines"] > 0
    assert any("sabbatical\u00a1xand" in line.lower() for doc in read_documents([slice_files[0]]) for line in doc)
    # Everything training needs is in the folder.
    assert (out / "tokenizer.json").is_file() and (out / "vocab.txt").is_file()
    assert m["vocab_size"] == 30522 and m["special_ids"]["mask"] == tok.mask_id and len(m["vocab"]) == 30522
    assert leftovers(tmp_path) == ["shards"]


def test_workers_chunks_and_shard_sizes_do_not_change_the_data(tmp_path, slice_files, vocab_file, monkeypatch):
    prepare(slice_files, vocab_file, tmp_path / "a", workers=1)
    monkeypatch.setattr(shards, "CHUNK_CHARS", 500)  # documents now straddle many tokenization chunks
    prepare(slice_files, vocab_file, tmp_path / "b", workers=2, shard_tokens=777)
    a, b = ShardedCorpus(tmp_path / "a"), ShardedCorpus(tmp_path / "b")
    assert a.n_docs == b.n_docs and len(b.manifest["shards"]) >= 3
    for d in range(a.n_docs):
        assert [s.tolist() for s in a.document(d)] == [s.tolist() for s in b.document(d)]


def test_document_rules_on_edge_cases(tmp_path, vocab_file, tok):
    f1 = tmp_path / "c" / "a.txt"
    f1.parent.mkdir()
    f1.write_bytes(b"\xef\xbb\xbfFirst line.\r\nSecond line.\r\n \t \r\nOther doc.\n\n\n\x01\x02\nAfter junk.\n")
    (tmp_path / "c" / "b.txt.gz").write_bytes(gzip.compress(b"Gzipped line.\nno newline at end"))
    (tmp_path / "c" / ".hidden").write_bytes(b"\x00\x00 binary but hidden")
    docs = read_documents([tmp_path / "c"])
    assert docs == [["First line.", "Second line."], ["Other doc."], ["\x01\x02", "After junk."],
                    ["Gzipped line.", "no newline at end"]]
    assert read_documents([tmp_path / "c"], documents="file") == [["First line.", "Second line.", "Other doc.", "\x01\x02",
                                                                   "After junk."], ["Gzipped line.", "no newline at end"]]
    m = prepare([tmp_path / "c"], vocab_file, tmp_path / "out", workers=1)
    c = ShardedCorpus(tmp_path / "out")
    # The control-character line gives no word pieces and is dropped, as in BERT.
    assert c.n_docs == 4 and m["counts"]["sentences"] == 6 and m["encoding_fallbacks"] == []
    assert [s.tolist() for s in c.document(2)] == [tok.tokenize_ids(["After junk."])[0]]


@pytest.mark.parametrize("case", ["empty", "blank", "binary", "missing", "glob", "vocab", "not-dataset"])
def test_bad_inputs_fail_before_writing(tmp_path, vocab_file, case):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "ok.txt").write_text("Some text.\n", encoding="utf-8")
    vocab, out, spec, culprit = vocab_file, tmp_path / "out" / "data", [corpus], None
    if case == "empty":
        (corpus / "ok.txt").write_bytes(b"")
        culprit = "ok.txt"
    elif case == "blank":  # only whitespace: found out while streaming, the temp folder must go
        (corpus / "ok.txt").write_text("  \n\n\t\n", encoding="utf-8")
        culprit = "ok.txt"
    elif case == "binary":
        (corpus / "model.bin").write_bytes(np.arange(5000, dtype=np.int32).tobytes())
        culprit = "model.bin"
    elif case == "missing":
        spec, culprit = [corpus / "ok.txt", tmp_path / "nope.txt"], "nope.txt"
    elif case == "glob":
        spec, culprit = [str(tmp_path / "*.md")], "*.md"
    elif case == "vocab":
        vocab, culprit = tmp_path / "vocab.txt", "vocab.txt"
    elif case == "not-dataset":
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("mine\n")
        culprit = "data"
    with pytest.raises(DataError) as e:
        prepare(spec, vocab, out, workers=1)
    msg = str(e.value)
    assert culprit in msg and "\n" not in msg
    if case == "not-dataset":
        assert leftovers(out) == ["notes.txt"] and leftovers(out.parent) == ["data"]
    else:
        assert not (tmp_path / "out").exists(), leftovers(tmp_path / "out")


def test_skip_bad_files_and_overwrite(tmp_path, vocab_file):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Alpha beta.\n\nGamma delta.\n", encoding="utf-8")
    (corpus / "b.bin").write_bytes(b"\x00\x01\x02" * 100)
    out = tmp_path / "out"
    m = prepare([corpus], vocab_file, out, skip_bad_files=True, workers=1)
    assert m["counts"]["documents"] == 2 and m["skipped_files"][0]["file"] == str(corpus / "b.bin")
    with pytest.raises(DataError, match="--overwrite"):
        prepare([corpus / "a.txt"], vocab_file, out, workers=1)
    assert load_manifest(out)["counts"]["documents"] == 2  # untouched
    (corpus / "a.txt").write_text("Only one document now.\n", encoding="utf-8")
    m = prepare([corpus / "a.txt"], vocab_file, out, overwrite=True, workers=1)
    assert m["counts"]["documents"] == 1 and leftovers(tmp_path) == ["corpus", "out"]


def test_hf_dataset_source(tmp_path, vocab_file, monkeypatch):
    fake = types.ModuleType("datasets")
    rows = [{"text": "Row one.\nStill row one."}, {"text": ""}, {"text": "Row three."}]
    fake.load_dataset = lambda name, config, split, streaming: iter(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    m = prepare(["hf:fake/corpus:cfg:train"], vocab_file, tmp_path / "out", workers=1)
    assert m["counts"]["documents"] == 2 and m["counts"]["sentences"] == 3
    with pytest.raises(DataError, match="no 'body' column"):
        prepare(["hf:fake/corpus"], vocab_file, tmp_path / "out2", workers=1, text_column="body")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataError, match="pip install datasets"):
        prepare(["hf:wikitext"], vocab_file, tmp_path / "out3", workers=1)
    assert leftovers(tmp_path) == ["out"]


def test_cli_prepare_and_inspect(tmp_path, slice_files, vocab_file):
    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "mobilebert", "data", "prepare", *map(str, slice_files), "--vocab", str(vocab_file),
           "--out", str(out), "--workers", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "prepared" in r.stdout and "3 files" in r.stdout and "2005-Bush.txt" in r.stdout and "cp1252" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mobilebert", "data", "inspect", str(out), "-n", "2"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("[CLS]") == 2 and "examples per epoch" in r.stdout
    # Same output folder again: refused with exit 2 and one line naming the folder.
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(out) in r.stderr and "Traceback" not in r.stderr


def test_cli_bad_input_exit_2(tmp_path, vocab_file):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "x.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    r = subprocess.run([sys.executable, "-m", "mobilebert", "data", "prepare", str(tmp_path / "corpus"), "--vocab",
                        str(vocab_file), "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "x.pdf" in r.stderr and "binary" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]
