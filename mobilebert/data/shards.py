"""`mobilebert data prepare`: tokenize a corpus into sharded, memory-mapped token arrays, and read them back.

This is the tokenization half of BERT's `create_pretraining_data.py` (paper-and-official-code.md §2.1; MobileBERT
reuses BERT's data processing), split off so that masking and NSP pairing happen at training time (pretraining.py)
with fresh masks every epoch instead of BERT's fixed `dupe_factor` copies.

Layout of a prepared folder (all written into a hidden temp folder that is renamed into place at the end, so a
failed or interrupted run leaves nothing half-written):

    manifest.json                  format, vocab (tokens, size, sha256, special ids), counts, shards, encoding report
    tokenizer.json, vocab.txt      the tokenizer, so training needs nothing else
    shard-00000.tokens.bin         (T,) uint16 word-piece ids (uint32 when the vocab has >= 65536 entries)
    shard-00000.sentences.npy      (S+1,) int64 token offset of each line ("sentence") within the shard
    shard-00000.documents.npy      (D+1,) int64 sentence offset of each document within the shard

Documents never straddle shards. Memory stays bounded: lines stream from disk in ~1 MiB chunks, worker processes
tokenize at most 2 chunks each ahead of the writer, and tokens go straight to disk; a shard is closed at the first
document boundary after `shard_tokens` tokens.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from glob import escape as glob_escape
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from mobilebert.data.corpus import DOCUMENT_MODES, EncodingReport, iter_lines, resolve_corpus
from mobilebert.data.shard_checks import (check_manifest_fields, check_shard_files, check_vocab_files, load_index, vocab_list, vocab_sha256)
from mobilebert.errors import DataError
from mobilebert.tokenizer import Tokenizer, TokenizerError

FORMAT = "mobilebert.pretraining-shards"
VERSION = 1
DEFAULT_SHARD_TOKENS = 1 << 26  # 64 Mi tokens = 128 MiB of uint16 per shard
CHUNK_CHARS = 1 << 20  # ~1 MiB of text per tokenization task

_worker_tok: Tokenizer | None = None


def _init_worker(tok_json: str) -> None:
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already; no Rust thread pool on top
    from tokenizers import Tokenizer as _HF
    _worker_tok = Tokenizer(_HF.from_str(tok_json))


def _tokenize_chunk(lines: list[str], dtype: str, tok: Tokenizer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lines -> (all tokens concatenated (T,), tokens per line (L,) int32); a line may give 0 tokens."""
    ids = (tok or _worker_tok).tokenize_ids(lines)
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter((t for seq in ids for t in seq), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def _chunks(lines: Iterator[tuple[str, bool]], chunk_chars: int) -> Iterator[tuple[list[str], np.ndarray, int]]:
    """Group (line, starts_document) pairs into (lines, (L,) bool flags, characters) of about chunk_chars."""
    buf, flags, n = [], [], 0
    for line, new_doc in lines:
        buf.append(line)
        flags.append(new_doc)
        n += len(line) + 1
        if n >= chunk_chars:
            yield buf, np.array(flags, dtype=bool), n
            buf, flags, n = [], [], 0
    if buf:
        yield buf, np.array(flags, dtype=bool), n


class _ShardWriter:
    """Appends tokenized lines to shards on disk, starting a new shard only at a document boundary."""

    def __init__(self, folder: Path, dtype: str, shard_tokens: int):
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards: list[dict] = []
        self.pending_doc = True  # a document boundary was seen since the last kept line
        self._open_shard()

    def _open_shard(self) -> None:
        self.name = f"shard-{len(self.shards):05d}"
        self.fh = open(self.folder / f"{self.name}.tokens.bin", "wb")
        self.lengths: list[np.ndarray] = []
        self.doc_starts: list[np.ndarray] = []
        self.n_tok = self.n_sent = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray, flags: np.ndarray) -> None:
        keep = np.flatnonzero(lengths > 0)  # lines with no word pieces are dropped, as in BERT
        if len(keep) == 0:
            self.pending_doc |= bool(flags.any())
            return
        seen = np.cumsum(flags)  # (L,) number of document starts up to each line
        kseen = seen[keep]
        starts = np.empty(len(keep), dtype=bool)  # (K,) kept line starts a document
        starts[0] = self.pending_doc or kseen[0] > 0
        starts[1:] = kseen[1:] != kseen[:-1]
        self.pending_doc = bool(seen[-1] > kseen[-1])
        klen = lengths[keep].astype(np.int64)
        pre = np.concatenate([[0], np.cumsum(klen)])  # (K+1,) token offsets in `tokens`
        doc_pos = np.flatnonzero(starts)
        cur, n = 0, len(keep)
        while cur < n:
            cand = doc_pos[doc_pos >= cur]
            # First document start where the open shard would reach shard_tokens: close the shard there.
            k = np.searchsorted(pre[cand] - pre[cur], self.shard_tokens - self.n_tok, side="left")
            split = int(cand[k]) if k < len(cand) else n
            if split > cur:
                self.fh.write(tokens[pre[cur]:pre[split]].tobytes())
                self.lengths.append(klen[cur:split])
                self.doc_starts.append(self.n_sent + np.flatnonzero(starts[cur:split]))
                self.n_tok += int(pre[split] - pre[cur])
                self.n_sent += split - cur
            if split < n:
                self._close_shard()
                self._open_shard()
            cur = split

    def _close_shard(self) -> None:
        self.fh.close()
        sent = np.concatenate([[0], np.cumsum(np.concatenate(self.lengths))]).astype(np.int64)
        docs = np.concatenate(self.doc_starts + [[self.n_sent]]).astype(np.int64)
        np.save(self.folder / f"{self.name}.sentences.npy", sent)
        np.save(self.folder / f"{self.name}.documents.npy", docs)
        self.shards.append({"name": self.name, "tokens": self.n_tok, "sentences": self.n_sent,
                            "documents": len(docs) - 1})

    def finish(self) -> list[dict]:
        if self.n_sent:
            self._close_shard()
        else:
            self.fh.close()
            (self.folder / f"{self.name}.tokens.bin").unlink()
        return self.shards


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise DataError(f"{out}: folder exists and is not a prepared dataset; choose another --out")
        if not overwrite:
            raise DataError(f"{out}: already holds a prepared dataset; pass --overwrite to replace it")


def prepare(corpus: Sequence[str | os.PathLike], vocab: str | os.PathLike | Tokenizer, out: str | os.PathLike, *,
            workers: int | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS, overwrite: bool = False,
            skip_bad_files: bool = False, text_column: str = "text", documents: str = "blank-line",
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Tokenize `corpus` (files, folders, globs, hf:NAME) into shards in `out`; returns the manifest.

    All input checks (paths, binary files, vocab, output folder) happen before anything is written; then
    everything is written to a temp folder beside `out` and renamed into place. `progress(chars, total_bytes)`
    is called after each chunk. `documents`: "blank-line" (BERT: a blank line ends a document) or "file" (one
    document per file). Raises `DataError` naming the file on bad input.
    """
    t0 = time.time()
    out = Path(out)
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be positive, got {shard_tokens}")
    if documents not in DOCUMENT_MODES:
        raise DataError(f"documents={documents!r}: choose one of {', '.join(DOCUMENT_MODES)}")
    _check_out(out, overwrite)
    sources, skipped = resolve_corpus(corpus, skip_bad_files, exclude=[out], text_column=text_column)
    try:
        tok = vocab if isinstance(vocab, Tokenizer) else Tokenizer.from_file(vocab)
    except TokenizerError as e:
        raise DataError(str(e)) from None
    if all(s.hf is None and s.size == 0 for s in sources):
        raise DataError(f"{', '.join(s.name for s in sources[:3])}{' ...' if len(sources) > 3 else ''}: "
                        "the corpus is empty (no text at all)")
    tokens_list = vocab_list(tok)
    dtype = "uint16" if len(tokens_list) <= 65536 else "uint32"
    workers = max(1, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    total_bytes = sum(s.size for s in sources)

    _remove_stale_partials(out)
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the output folder ({e.strerror})") from None
    report, bad = EncodingReport(), ([] if skip_bad_files else None)
    pool = None
    try:
        writer = _ShardWriter(tmp, dtype, shard_tokens)
        chunks = _chunks(iter_lines(sources, report, bad, documents), CHUNK_CHARS)
        done = 0
        if workers == 1:  # in-process; the Rust tokenizer still uses its own threads
            for lines, flags, n in chunks:
                writer.add(*_tokenize_chunk(lines, dtype, tok), flags)
                done += n
                if progress:
                    progress(done, total_bytes)
        else:
            # fork (Linux) needs no `if __name__ == "__main__"` guard in the caller's script; spawn elsewhere.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            pool = multiprocessing.get_context(method).Pool(workers, _init_worker, (tok.backend.to_str(),))
            inflight: deque = deque()
            for item in chunks:
                inflight.append((pool.apply_async(_tokenize_chunk, (item[0], dtype)), item[1], item[2]))
                while len(inflight) > 2 * workers:  # bounded read-ahead: the pool never holds the corpus
                    res, flags, n = inflight.popleft()
                    writer.add(*res.get(), flags)
                    done += n
                    if progress:
                        progress(done, total_bytes)
            while inflight:
                res, flags, n = inflight.popleft()
                writer.add(*res.get(), flags)
                done += n
                if progress:
                    progress(done, total_bytes)
            pool.close()
        shards = writer.finish()
        if not shards:
            names = ", ".join(s.name for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
            raise DataError(f"{names}: the corpus is empty (no text at all)")
        tok.save(tmp)
        manifest = {
            "format": FORMAT, "version": VERSION, "created_by": "mobilebert data prepare",
            "dtype": dtype, "vocab_size": len(tokens_list), "vocab_sha256": vocab_sha256(tokens_list),
            "special_ids": {"pad": tok.pad_id, "unk": tok.unk_id, "cls": tok.cls_id, "sep": tok.sep_id,
                            "mask": tok.mask_id},
            "counts": {"files": len(sources), "documents": sum(s["documents"] for s in shards),
                       "sentences": sum(s["sentences"] for s in shards), "tokens": sum(s["tokens"] for s in shards)},
            "shards": shards,
            "encoding_fallbacks": report.as_list(),
            "documents": documents,
            "skipped_files": skipped + (bad or []),
            "sources": [s.name for s in sources],
            "seconds": round(time.time() - t0, 2),
            "vocab": tokens_list,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _swap_into_place(tmp, out)
    except BaseException:
        if pool is not None:
            pool.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # parents this call created, innermost first
            try:
                p.rmdir()
            except OSError:
                break
        raise
    finally:
        if pool is not None:
            pool.join()
    return manifest


def _remove_stale_partials(out: Path) -> None:
    """Remove temp folders left beside `out` by runs that were killed (their process no longer exists)."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{glob_escape(out.name)}.*-*"):
        kind, _, pid = p.name[len(out.name) + 2:].partition("-")
        if kind in ("partial", "old") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename tmp -> out; an existing (empty or --overwrite) out is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_manifest(folder: str | os.PathLike, verify: bool = True) -> dict:
    """Read and check `manifest.json` of a prepared folder; `DataError` naming the file if it is not one.

    verify: also check the folder's tokenizer.json / vocab.txt against the manifest's vocabulary, and the shard
    files' sizes and offset headers (mobilebert/data/shard_checks.py)."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{folder}: not a prepared dataset (no manifest.json); run `mobilebert data prepare`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{path}: not a mobilebert pre-training dataset manifest")
    version = m.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise DataError(f"{path}: format version {version!r} is newer than this mobilebert ({VERSION})")
    check_manifest_fields(path, m)
    if verify:
        check_vocab_files(folder, m)
        check_shard_files(folder, m)
    return m


class ShardedCorpus:
    """Read-only view of a prepared folder: token memmaps plus global document -> sentence index.

    Sentence ids and document ids are global (over all shards). `doc_sent` (D+1,) holds each document's first
    sentence; `shard_sent` (N+1,) each shard's first sentence. Pickles without its memmaps (DataLoader workers).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        self._open()

    def _open(self) -> None:
        m = self.manifest
        self.dtype = np.dtype(m["dtype"])
        self.tokens, self.sent_off, doc_parts = [], [], []
        sent_base = [0]
        for sh in m["shards"]:
            stem = self.folder / sh["name"]
            bin_path = stem.with_name(stem.name + ".tokens.bin")
            try:
                if bin_path.stat().st_size != sh["tokens"] * self.dtype.itemsize:
                    raise DataError(f"{bin_path}: size does not match manifest.json ({sh['tokens']} tokens); "
                                    "the dataset is damaged, prepare it again")
                # An empty memmap is an error in numpy; an empty shard is not in the manifest anyway.
                self.tokens.append(np.memmap(bin_path, dtype=self.dtype, mode="r") if sh["tokens"]
                                   else np.zeros(0, self.dtype))
                sent = load_index(stem.with_name(stem.name + ".sentences.npy"), sh["sentences"], sh["tokens"],
                                   "token", mmap=True)
                docs = load_index(stem.with_name(stem.name + ".documents.npy"), sh["documents"], sh["sentences"],
                                   "sentence", mmap=False)
                self.sent_off.append(sent)
            except FileNotFoundError as e:
                raise DataError(f"{e.filename}: missing shard file; the dataset is damaged, prepare it again") from None
            except OSError as e:
                raise DataError(f"{e.filename or bin_path}: cannot read ({e.strerror}); the dataset is damaged, "
                                "prepare it again") from None
            doc_parts.append(docs[:-1] + sent_base[-1])
            sent_base.append(sent_base[-1] + sh["sentences"])
        self.shard_sent = np.array(sent_base, dtype=np.int64)
        self.doc_sent = np.concatenate(doc_parts + [self.shard_sent[-1:]]).astype(np.int64)

    def __getstate__(self):
        return {"folder": self.folder, "manifest": self.manifest}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    @property
    def n_docs(self) -> int:
        return len(self.doc_sent) - 1

    @property
    def n_sentences(self) -> int:
        return int(self.shard_sent[-1])

    def shard_of(self, sentence: int) -> int:
        return int(np.searchsorted(self.shard_sent, sentence, side="right") - 1)

    def span(self, s0: int, s1: int) -> np.ndarray:
        """Tokens of global sentences [s0, s1), which must lie in one shard (e.g. within one document)."""
        k = self.shard_of(s0)
        off, base = self.sent_off[k], self.shard_sent[k]
        return self.tokens[k][off[s0 - base]:off[s1 - base]]

    def document(self, d: int) -> list[np.ndarray]:
        """The sentences (token arrays) of global document d."""
        return [self.span(s, s + 1) for s in range(int(self.doc_sent[d]), int(self.doc_sent[d + 1]))]

    def load_tokenizer(self) -> Tokenizer:
        return Tokenizer.from_file(self.folder / "tokenizer.json")
