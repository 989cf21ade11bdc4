"""MLM + NSP example generator (mobilebert/data/pretraining.py): BERT semantics, statistics, determinism.

Statistics use the real inaugural addresses; NSP structure uses synthetic documents whose lines are
"w w w w j" (5 word pieces: a word unique to the document, then the line number), so a pair's origin is readable.
"""

import pickle

import numpy as np
import pytest
import torch

from mobilebert.data import MaskingConfig, PretrainingData, prepare, truncation_counts
from mobilebert.errors import ConfigError, DataError
from mobilebert.tokenizer import Tokenizer

N_DOCS, N_LINES = 40, 30


@pytest.fixture(scope="module")
def tok(vocab_file):
    return Tokenizer.from_file(vocab_file)


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory, data_dir, vocab_file):
    out = tmp_path_factory.mktemp("real") / "shards"
    prepare([data_dir / "corpus" / "inaugural"], vocab_file, out, workers=1, shard_tokens=40000)
    return out


@pytest.fixture(scope="module")
def words(tok):
    vocab = [t for t, _ in sorted(tok.backend.get_vocab().items(), key=lambda kv: kv[1])]
    ws = [t for t in vocab[3000:6000] if t.isalpha() and len(t) >= 4][:N_DOCS]
    assert all(len(tok.tokenize_ids([f"{w} {w} {w} {w} {N_LINES}"])[0]) == 5 for w in ws)
    return ws


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory, vocab_file, words):
    root = tmp_path_factory.mktemp("synth")
    text = "\n\n".join("\n".join(f"{w} {w} {w} {w} {j}" for j in range(1, N_LINES + 1)) for w in words)
    (root / "docs.txt").write_text(text + "\n", encoding="utf-8")
    prepare([root / "docs.txt"], vocab_file, root / "shards", workers=1, shard_tokens=1000)
    return root / "shards"


def originals(b: dict) -> torch.Tensor:
    return torch.where(b["labels"] != -100, b["labels"], b["input_ids"])


def structure(b: dict, r: int) -> tuple[int, int]:
    """(length, position of the [SEP] after A) of row r, from the masks alone."""
    n = int(b["attention_mask"][r].sum())
    ones = torch.nonzero(b["token_type_ids"][r]).flatten()
    return n, (int(ones[0]) - 1 if len(ones) else n - 1)


def test_layout(real_dir, tok):
    data = PretrainingData(real_dir, seq_len=128, masking=MaskingConfig(), seed=1)
    b = data.batch(0, 64)
    assert set(b) == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}
    assert all(v.dtype == torch.long for v in b.values()) and b["input_ids"].shape == (64, 128)
    assert b["next_sentence_label"].shape == (64,)
    for r in range(64):
        n, sep = structure(b, r)
        am, tt, ids = b["attention_mask"][r], b["token_type_ids"][r], b["input_ids"][r]
        assert am[:n].all() and not am[n:].any() and (ids[n:] == tok.pad_id).all()
        assert ids[0] == tok.cls_id and ids[sep] == tok.sep_id and ids[n - 1] == tok.sep_id
        assert not tt[:sep + 1].any() and tt[sep + 1:n].all() and not tt[n:].any() and 3 < sep + 2 < n
        assert (b["labels"][r, [0, sep, n - 1]] == -100).all() and (b["labels"][r, n:] == -100).all()


def test_masking_statistics(real_dir, tok):
    data = PretrainingData(real_dir, seq_len=128, masking=MaskingConfig(max_predictions=20), seed=2)
    b = data.batch(0, 3000)
    masked = b["labels"] != -100
    maskable = b["attention_mask"].sum(1) - 3
    assert 0.135 < masked.sum() / maskable.sum() < 0.175  # BERT: round(15% of the length incl. specials)
    assert masked.sum(1).max() <= 20 and masked.sum(1).min() >= 1
    inp, lab = b["input_ids"][masked], b["labels"][masked]
    as_mask = (inp == tok.mask_id).float().mean()
    kept = (inp == lab).float().mean()
    assert 0.78 < as_mask < 0.82 and 0.085 < kept < 0.115 and 0.085 < 1 - as_mask - kept < 0.115
    assert not torch.isin(lab, torch.tensor([tok.pad_id, tok.cls_id, tok.sep_id])).any()
    few = PretrainingData(real_dir, seq_len=128, masking=MaskingConfig(max_predictions=5), seed=2).batch(0, 500)
    counts = (few["labels"] != -100).sum(1)
    assert counts.max() == 5 and (counts == 5).float().mean() > 0.9


def test_nsp_pairs_follow_or_come_from_another_document(synth_dir, tok, words):
    word_ids = {tok.token_to_id(w): d for d, w in enumerate(words)}
    data = PretrainingData(synth_dir, seq_len=63, masking=MaskingConfig(short_seq_prob=0.3), seed=3)  # 60 = 12 lines
    assert data.corpus.n_docs == N_DOCS
    b = data.batch(0, 2000)
    orig = originals(b)
    assert 0.45 < b["next_sentence_label"].float().mean() < 0.55
    for r in range(2000):
        n, sep = structure(b, r)
        a, bb = orig[r, 1:sep].tolist(), orig[r, sep + 1:n - 1].tolist()
        doc_a = {word_ids[t] for t in a if t in word_ids}
        doc_b = {word_ids[t] for t in bb if t in word_ids}
        assert len(doc_a) == 1 and len(doc_b) <= 1
        if b["next_sentence_label"][r] == 1:
            assert doc_a != doc_b  # random B never comes from A's own document
        else:
            # B is the actual continuation: whole lines of A's document, line numbers consecutive across [SEP];
            # or, for a one-line segment, the rest of A's line (split_single_sentence).
            joined = a + bb
            if len(joined) == 5:
                assert len(set(joined[:4])) == 1 and joined[4] not in word_ids
                continue
            assert doc_a == doc_b and len(a) % 5 == 0 and len(bb) % 5 == 0
            nums = [int(tok.convert_ids_to_tokens([t])[0]) for t in joined[4::5]]
            assert nums == list(range(nums[0], nums[0] + len(nums)))


def test_one_line_documents(tmp_path, vocab_file, words):
    # WikiText-style: every document is a single line; NSP must still be ~50/50.
    lines = [" ".join([w] * 12 + [str(k % 9 + 1) for k in range(8)]) for w in words]
    (tmp_path / "one.txt").write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    prepare([tmp_path / "one.txt"], vocab_file, tmp_path / "shards", workers=1)
    data = PretrainingData(tmp_path / "shards", seq_len=32, seed=4)
    assert len(data) == N_DOCS
    b = data.batch(0, 1000)
    assert 0.4 < b["next_sentence_label"].float().mean() < 0.6
    orig = originals(b)
    for r in np.flatnonzero(b["next_sentence_label"].numpy() == 0)[:50]:
        n, sep = structure(b, r)
        joined = orig[r, 1:sep].tolist() + orig[r, sep + 1:n - 1].tolist()
        assert len({tuple(joined)} & {tuple(data._sentences(s, s + 1).tolist()) for s in range(N_DOCS)}) == 1


def test_determinism_and_rank_slicing(real_dir):
    cfg = MaskingConfig(mask_prob=0.15, max_predictions=20, whole_word=False, nsp=True, short_seq_prob=0.1)
    data = PretrainingData(real_dir, seq_len=128, masking=cfg, seed=1234)
    steps_per_epoch = len(data) // 16
    for step in (0, 3, steps_per_epoch, steps_per_epoch + 1):  # also across the epoch boundary
        full = data.batch(step, 16, rank=0, world_size=1)
        halves = [data.batch(step, 8, rank=r, world_size=2) for r in range(2)]
        quarters = [data.batch(step, 4, rank=r, world_size=4) for r in range(4)]
        for k in full:
            assert torch.equal(full[k], torch.cat([h[k] for h in halves]))
            assert torch.equal(full[k], torch.cat([q[k] for q in quarters]))
    # A fresh object (a resumed run) and a pickled copy (a DataLoader worker) give the same batches.
    again = PretrainingData(real_dir, seq_len=128, masking=cfg, seed=1234)
    clone = pickle.loads(pickle.dumps(data))
    for other in (again, clone):
        x, y = data.batch(5, 16), other.batch(5, 16)
        assert all(torch.equal(x[k], y[k]) for k in x)
    ex = data.example(5 * 16 + 3)
    assert np.array_equal(ex["input_ids"], data.batch(5, 16)["input_ids"][3].numpy())
    other_seed = PretrainingData(real_dir, seq_len=128, masking=cfg, seed=99).batch(5, 16)
    assert not torch.equal(other_seed["input_ids"], data.batch(5, 16)["input_ids"])
    # Each epoch visits every target segment exactly once, in a new order.
    p0, p1 = data._perm(0), data._perm(1)
    assert np.array_equal(np.sort(p0), np.arange(len(data))) and not np.array_equal(p0, p1)


def test_whole_word_masking(real_dir, tok):
    data = PretrainingData(real_dir, seq_len=128, masking=MaskingConfig(whole_word=True), seed=5)
    b = data.batch(0, 400)
    orig, masked = originals(b), b["labels"] != -100
    is_sub = data.is_subword
    multi = 0
    for r in range(400):
        n, sep = structure(b, r)
        for lo, hi in ((1, sep), (sep + 1, n - 1)):
            ids, m = orig[r, lo:hi].numpy(), masked[r, lo:hi].numpy()
            starts = np.flatnonzero(~is_sub[ids] | (np.arange(len(ids)) == 0))
            for s, e in zip(starts, list(starts[1:]) + [len(ids)]):
                assert m[s:e].all() or not m[s:e].any(), "a word was partly masked"
                multi += int(e - s > 1 and m[s])
        assert masked[r].sum() <= 20
    assert multi > 20  # multi-piece words do get masked


def test_segments_partition_documents_greedily(real_dir):
    data = PretrainingData(real_dir, seq_len=64, masking=MaskingConfig(short_seq_prob=0.5), seed=8)
    c, start, count, target = data.corpus, data.seg_start, data.seg_count, data.seg_target
    assert start[0] == 0 and np.array_equal(start[1:], start[:-1] + count[:-1])  # every sentence, once, in order
    assert start[-1] + count[-1] == c.n_sentences and np.isin(c.doc_sent[:-1], start).all()
    assert (target < 61).mean() > 0.3 and target.min() >= 2 and target.max() == 61
    for i in range(len(data)):
        s0, s1 = int(start[i]), int(start[i] + count[i])
        doc_end = int(c.doc_sent[np.searchsorted(c.doc_sent, s0, side="right")])
        assert s1 <= doc_end  # never crosses a document boundary
        # BERT: add sentences until the target is reached or the document ends; never stop early.
        assert len(c.span(s0, s1 - 1)) < target[i] and (len(c.span(s0, s1)) >= target[i] or s1 == doc_end)


def test_truncation_counts_match_bert_loop():
    for la in range(1, 30):
        for lb in range(0, 30):
            for max_tokens in (5, 13, 25, 40):
                a, b = la, lb
                while a + b > max_tokens:  # BERT's truncate_seq_pair, counting only
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert truncation_counts(la, lb, max_tokens) == (la - a, lb - b)


def test_without_nsp_and_long_sequences(real_dir, tok):
    data = PretrainingData(real_dir, seq_len=512, masking=MaskingConfig(nsp=False, max_predictions=80), seed=6)
    b = data.batch(0, 32)
    assert b["input_ids"].shape == (32, 512) and not b["token_type_ids"].any()
    assert (b["next_sentence_label"] == -100).all()
    n = b["attention_mask"].sum(1)
    assert (b["input_ids"][torch.arange(32), n - 1] == tok.sep_id).all() and n.max() > 128


def test_config_and_damaged_data_errors(real_dir, tmp_path):
    with pytest.raises(ConfigError, match="seq_len"):
        PretrainingData(real_dir, seq_len=4)
    with pytest.raises(ConfigError, match="mask_prob"):
        PretrainingData(real_dir, masking=MaskingConfig(mask_prob=0.0))
    data = PretrainingData(real_dir)
    with pytest.raises(ConfigError, match="vocab_size"):
        data.check_model_vocab(1000)
    with pytest.raises(DataError, match="no manifest.json"):
        PretrainingData(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in real_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "shard-00000.tokens.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="shard-00000.tokens.bin"):
        PretrainingData(bad)

