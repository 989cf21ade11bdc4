"""MLM + NSP pre-training examples drawn from prepared shards (BERT's `create_pretraining_data.py`, dynamic).

Implements the example-creation half of BERT's pipeline that MobileBERT reuses (paper-and-official-code.md §2.1,
§2.3 item 7; BERT paper §3.1 "Masked LM" and "Next Sentence Prediction"):

* Target segments: each document's sentences are packed greedily until `target_seq_length` tokens, where the
  target is `seq_len - 3`, or with probability `short_seq_prob` a random length in [2, seq_len - 3]. As in BERT,
  the target is drawn once per document and kept for all of its segments, so a short-target document yields
  more (short) segments and the share of short examples exceeds `short_seq_prob` (BERT on Wikipedia: ~26% at
  0.1). Measured on ../shared/data/corpus (46,400 documents, median 3 lines each; short_seq_prob 0.1): 15.1% of
  the 58,766 examples per epoch are short at seq_len 128, seed 0 (14.1-16.7% over seeds 0-2; 15.9% at 64, 12.1%
  at 512), against 10.0% when the target was drawn per segment. Our documents are short paragraphs, so fewer
  extra segments come out of a short draw than from Wikipedia articles.
* Segment A = the first `a_end` (random) sentences of a target segment; B = the rest of the segment (label 0), or
  with probability 0.5, or always when the segment is one sentence, sentences from a random position of a random
  *other* document (label 1, HF convention). The pair is trimmed as in `truncate_seq_pair` (always the longer
  side, front or back at random) and laid out as `[CLS] A [SEP] B [SEP]`, padded with [PAD].
* Masking: round(15% of the sequence length), at most `max_predictions`, of the non-special positions (whole words
  when `whole_word`, i.e. "##" pieces stay with their word); each chosen token becomes [MASK] 80%, a uniformly
  random vocabulary token 10%, itself 10%.

Differences from BERT, all deliberate: masks and A/B splits are drawn afresh for every example index (dynamic,
no `dupe_factor` copies); the segmentation of documents is fixed per (corpus, seq_len, seed) so that example `i`
can be built alone, and BERT's "put the unused sentences back" step is dropped; a one-sentence segment of >= 2
tokens may be split inside the sentence to give a real "B follows A" pair (`split_single_sentence`), so corpora of
one paragraph per line (e.g. WikiText) still get 50% NSP positives.

Random access: example `i` is a pure function of (seed, i); epoch `e` visits the segments in a permutation drawn
from (seed, e). The global batch of `step` is examples [step*B*W, (step+1)*B*W) and rank r takes [r*B, (r+1)*B),
so any world size sees the same global batch and resuming at `step` is bit-exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mobilebert.data.shards import ShardedCorpus
from mobilebert.errors import ConfigError

IGNORE_INDEX = -100  # label of positions that are not predicted (PyTorch / HF convention)
_EXAMPLE, _PERMUTATION, _SEGMENTS = 0, 1, 2  # tags that keep the random streams apart


@dataclass
class MaskingConfig:
    """How examples are built; defaults follow BERT / MobileBERT (15%, 20 predictions, NSP, 10% short)."""

    mask_prob: float = 0.15
    max_predictions: int = 20
    whole_word: bool = False
    nsp: bool = True
    short_seq_prob: float = 0.1
    split_single_sentence: bool = True

    def validate(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"masking.mask_prob: must be in (0, 1), got {self.mask_prob}")
        if self.max_predictions < 1:
            raise ConfigError(f"masking.max_predictions: must be at least 1, got {self.max_predictions}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ConfigError(f"masking.short_seq_prob: must be in [0, 1], got {self.short_seq_prob}")


def truncation_counts(la: int, lb: int, max_tokens: int) -> tuple[int, int]:
    """Tokens BERT's `truncate_seq_pair` removes from A and B: it trims the longer side (B on ties) one at a time."""
    excess = la + lb - max_tokens
    if excess <= 0:
        return 0, 0
    if la > lb:
        d = la - lb
        return (excess, 0) if excess <= d else (d + (excess - d) // 2, (excess - d + 1) // 2)
    d = lb - la
    return (0, excess) if excess <= d else ((excess - d) // 2, d + (excess - d + 1) // 2)


class PretrainingData:
    """MLM + NSP batches from a folder made by `mobilebert data prepare` (see the module docstring).

    batch(step, batch_size, rank, world_size) -> dict of LongTensors: input_ids, token_type_ids, attention_mask,
    labels (B, S) (original id where masked, -100 elsewhere) and next_sentence_label (B,) (0 = B follows A,
    1 = random B; -100 when masking.nsp is False). len(data) = number of target segments (examples per epoch).
    """

    def __init__(self, shard_dir: str | os.PathLike, seq_len: int = 128, masking: MaskingConfig | None = None,
                 seed: int = 0):
        self.masking = masking if masking is not None else MaskingConfig()
        self.masking.validate()
        if not 8 <= seq_len <= 65535:
            raise ConfigError(f"seq_len: must be between 8 and 65535, got {seq_len}")
        self.seq_len, self.seed = int(seq_len), int(seed)
        self.corpus = ShardedCorpus(shard_dir)
        m = self.corpus.manifest
        self.vocab_size = int(m["vocab_size"])
        sp = m["special_ids"]
        self.pad_id, self.cls_id, self.sep_id, self.mask_id = sp["pad"], sp["cls"], sp["sep"], sp["mask"]
        self.is_subword = np.array([t.startswith("##") for t in m["vocab"]], dtype=bool)  # (V,)
        self.max_tokens = self.seq_len - (3 if self.masking.nsp else 2)
        self._perms: dict[int, np.ndarray] = {}
        self._build_segments()

    # ------------------------------------------------------------------ segments
    def _build_segments(self) -> None:
        """Pack every document's sentences greedily into target segments (BERT), vectorised per shard.

        Every document gets a target length (each of its sentences carries it) and so every sentence a successor
        `nxt[s]` = the first sentence at which a segment starting at s has reached its target (one searchsorted
        for the whole shard). The segments are then the chains doc_start -> nxt -> nxt ... -> doc end, followed
        for all documents at once while many are left, then in plain Python for the few long ones.
        """
        c, ssp = self.corpus, self.masking.short_seq_prob
        starts, counts, targets = [], [], []
        for k, off in enumerate(c.sent_off):
            off = np.asarray(off)  # (S+1,) token offsets
            n_sent, base = len(off) - 1, int(c.shard_sent[k])
            lo, hi = int(np.searchsorted(c.doc_sent, base)), int(np.searchsorted(c.doc_sent, c.shard_sent[k + 1]))
            doc_lo = c.doc_sent[lo:hi] - base  # (D,) first sentence of each document
            doc_hi = c.doc_sent[lo + 1:hi + 1] - base
            end = np.repeat(doc_hi, doc_hi - doc_lo)  # (S,) end sentence of each sentence's document
            rng = np.random.default_rng([self.seed, _SEGMENTS, k])
            # BERT draws target_seq_length once per document and keeps it for all of its segments.
            doc_target = np.full(len(doc_lo), self.max_tokens, dtype=np.int64)  # (D,)
            short = rng.random(len(doc_lo)) < ssp
            doc_target[short] = rng.integers(2, self.max_tokens + 1, int(short.sum()))
            target = np.repeat(doc_target, doc_hi - doc_lo)  # (S,) its document's target, for every sentence
            nxt = np.searchsorted(off, off[:-1] + target, side="left")
            nxt = np.minimum(np.maximum(nxt, np.arange(1, n_sent + 1)), end)  # (S,)
            p, nodes = doc_lo, [doc_lo]
            while len(p) >= 256:  # one numpy step advances every unfinished document by one segment
                q = nxt[p]
                p = q[q < end[p]]
                nodes.append(p)
            if len(p):
                nxt_l, end_l, rest = nxt.tolist(), end.tolist(), []
                for s in p.tolist():
                    e, s = end_l[s], nxt_l[s]
                    while s < e:
                        rest.append(s)
                        s = nxt_l[s]
                nodes.append(np.array(rest, dtype=np.int64))
            seg = np.sort(np.concatenate(nodes))  # corpus order, for readable `data inspect`
            starts.append(seg + base)
            counts.append((nxt[seg] - seg).astype(np.int32))
            targets.append(target[seg].astype(np.int32))
        self.seg_start = np.concatenate(starts)  # (N,) int64 first global sentence
        self.seg_count = np.concatenate(counts)  # (N,) int32 number of sentences
        self.seg_target = np.concatenate(targets)  # (N,) int32 target_seq_length
        # Plain ndarray views of the memmaps: slicing them is cheaper than slicing np.memmap objects.
        self._tok = [np.asarray(t) for t in c.tokens]
        self._off = [np.asarray(o) for o in c.sent_off]

    def __len__(self) -> int:
        return len(self.seg_start)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_tok"), state.pop("_off")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._tok = [np.asarray(t) for t in self.corpus.tokens]
        self._off = [np.asarray(o) for o in self.corpus.sent_off]

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, _PERMUTATION, epoch]).permutation(len(self))
        return self._perms[epoch]

    def check_model_vocab(self, model_vocab_size: int) -> None:
        """Raise ConfigError when the data holds ids the model's embedding cannot look up."""
        if self.vocab_size > model_vocab_size:
            raise ConfigError(f"{self.corpus.folder}: the data's vocabulary has {self.vocab_size} tokens but the "
                              f"model's vocab_size is {model_vocab_size}")

    # ------------------------------------------------------------------ examples
    def _sentences(self, s0: int, s1: int) -> np.ndarray:
        k = int(np.searchsorted(self.corpus.shard_sent, s0, side="right") - 1)
        base, off = int(self.corpus.shard_sent[k]), self._off[k]
        return self._tok[k][off[s0 - base]:off[s1 - base]]

    def _random_b(self, rng: np.random.Generator, s0: int, target_b: int) -> np.ndarray:
        """Sentences from a random start in a random other document, until target_b tokens (BERT)."""
        doc_sent, n_docs = self.corpus.doc_sent, len(self.corpus.doc_sent) - 1
        d = int(np.searchsorted(doc_sent, s0, side="right") - 1)
        r = d
        if n_docs > 1:  # uniform over the other documents, no retries needed
            r = int(rng.integers(0, n_docs - 1))
            r += r >= d
        rs = int(rng.integers(doc_sent[r], doc_sent[r + 1]))
        k = int(np.searchsorted(self.corpus.shard_sent, rs, side="right") - 1)
        base, off = int(self.corpus.shard_sent[k]), self._off[k]
        lo, hi = rs - base, int(doc_sent[r + 1]) - base
        e = min(max(int(np.searchsorted(off, off[lo] + target_b, side="left")), lo + 1), hi)
        return self._tok[k][off[lo]:off[e]]

    def _pair(self, rng: np.random.Generator, slot: int) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Segments A and B (B None without NSP) and the NSP label of one target segment."""
        s0, ns, target = int(self.seg_start[slot]), int(self.seg_count[slot]), int(self.seg_target[slot])
        if not self.masking.nsp:
            return self._sentences(s0, s0 + ns), None, IGNORE_INDEX
        a_end = int(rng.integers(1, ns)) if ns >= 2 else 1
        a = self._sentences(s0, s0 + a_end)
        if ns == 1 and self.masking.split_single_sentence and len(a) >= 2:
            is_random = rng.random() < 0.5
        else:
            is_random = ns == 1 or rng.random() < 0.5
        if is_random:
            return a, self._random_b(rng, s0, max(1, target - len(a))), 1
        if ns >= 2:
            return a, self._sentences(s0 + a_end, s0 + ns), 0
        # One sentence: cut it at a random word start so that B really follows A.
        cuts = np.flatnonzero(~self.is_subword[a[1:]]) + 1
        cut = int(cuts[rng.integers(len(cuts))]) if len(cuts) else int(rng.integers(1, len(a)))
        return a[:cut], a[cut:], 0

    def _fill(self, i: int, row: int, ids: np.ndarray, types: np.ndarray, attn: np.ndarray,
              labels: np.ndarray) -> int:
        """Write example i into row `row` of the (B, S) arrays; return its NSP label."""
        epoch, j = divmod(i, len(self))
        rng = np.random.default_rng([self.seed, _EXAMPLE, i])
        a, b, nsp = self._pair(rng, int(self._perm(epoch)[j]))
        la, lb = len(a), (0 if b is None else len(b))
        ra, rb = truncation_counts(la, lb, self.max_tokens)
        if ra:  # each removed token comes off the front or the back with probability 1/2
            front = int(rng.binomial(ra, 0.5))
            a, la = a[front:la - (ra - front)], la - ra
        if rb:
            front = int(rng.binomial(rb, 0.5))
            b, lb = b[front:lb - (rb - front)], lb - rb
        x = ids[row]
        x[0], x[1:1 + la], x[1 + la] = self.cls_id, a, self.sep_id
        n = la + 2
        if b is not None:
            x[n:n + lb], x[n + lb] = b, self.sep_id
            types[row, n:n + lb + 1] = 1
            n += lb + 1
        attn[row, :n] = 1
        self._mask(rng, x, labels[row], la, lb, n)
        return nsp

    def _mask(self, rng: np.random.Generator, x: np.ndarray, lab: np.ndarray, la: int, lb: int, n: int) -> None:
        """BERT's create_masked_lm_predictions on one row x (S,) in place; labels into lab (S,)."""
        cand = np.arange(1, 1 + la) if not lb else np.concatenate([np.arange(1, 1 + la), np.arange(2 + la, 2 + la + lb)])
        num = min(self.masking.max_predictions, max(1, int(round(n * self.masking.mask_prob))), len(cand))
        if not self.masking.whole_word:
            chosen = cand[rng.permutation(len(cand))[:num]]
        else:
            starts = ~self.is_subword[x[cand]]  # a word starts at every non-"##" piece ...
            starts[0] = True
            if lb:
                starts[la] = True  # ... and at the start of each segment
            first = np.flatnonzero(starts)
            size = np.diff(np.append(first, len(cand)))
            picked, total = [], 0
            for g in rng.permutation(len(first)).tolist():
                if total >= num:
                    break
                if total + size[g] > num:  # BERT skips a word that would overshoot the budget
                    continue
                picked.append(cand[first[g]:first[g] + size[g]])
                total += int(size[g])
            chosen = np.concatenate(picked) if picked else cand[:0]
        orig = x[chosen]
        lab[chosen] = orig
        u = rng.random(len(chosen))
        new = np.where(u < 0.8, self.mask_id, orig)  # 80% [MASK], 10% unchanged
        rand = u >= 0.9  # 10% a random token
        new[rand] = rng.integers(0, self.vocab_size, int(rand.sum()))
        x[chosen] = new

    def _arrays(self, first: int, count: int) -> dict[str, np.ndarray]:
        shape = (count, self.seq_len)
        ids = np.full(shape, self.pad_id, dtype=np.int64)
        types, attn = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
        labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
        nsp = np.array([self._fill(first + r, r, ids, types, attn, labels) for r in range(count)], dtype=np.int64)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": attn, "labels": labels,
                "next_sentence_label": nsp}

    def example(self, i: int) -> dict[str, np.ndarray]:
        """Example i (global index) as numpy arrays: (S,) each and a scalar next_sentence_label."""
        out = self._arrays(int(i), 1)
        return {k: v[0] for k, v in out.items()}

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> dict:
        """This rank's slice of the global batch of `step`, as a dict of torch.LongTensor."""
        import torch

        if step < 0 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch request: step={step} batch_size={batch_size} rank={rank} "
                             f"world_size={world_size}")
        first = (step * world_size + rank) * batch_size
        return {k: torch.from_numpy(v) for k, v in self._arrays(first, batch_size).items()}

    def epoch_of(self, step: int, batch_size: int, world_size: int = 1) -> float:
        """Epochs (passes over the target segments) completed at the start of `step`."""
        return step * batch_size * world_size / len(self)
