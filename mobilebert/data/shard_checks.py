"""Checks on a prepared pre-training folder (mobilebert/data/shards.py) before anything reads it.

A hand-edited, truncated or mixed-up folder would otherwise fail deep inside numpy with a traceback, or worse,
train on ids that mean other tokens. Each check ends in one `DataError` naming the file:
* `check_manifest_fields`: manifest.json has the fields readers use, with sane types, and its token list
  matches its own sha256;
* `check_vocab_files`: tokenizer.json and vocab.txt in the folder are the vocabulary the shards were made
  with (training copies them into every model folder it writes);
* `load_index`: a shard's sentence/document offset array is a readable int64 .npy of the length the manifest
  gives, from 0 to the shard's token/sentence count.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from mobilebert.errors import DataError
from mobilebert.tokenizer import Tokenizer, TokenizerError


def vocab_list(tok: Tokenizer) -> list[str]:
    """Tokens in id order ("" for ids the vocabulary skips)."""
    vocab = tok.backend.get_vocab()
    out = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        out[i] = t
    return out


def vocab_sha256(tokens: list[str]) -> str:
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def check_manifest_fields(path: Path, m: dict) -> None:
    """The fields readers index into, with their types: a hand-edited or damaged manifest is one DataError."""
    def bad(what: str):
        raise DataError(f"{path}: {what}; the dataset is damaged, prepare it again")

    if m.get("dtype") not in ("uint16", "uint32"):
        bad(f"\"dtype\" is {m.get('dtype')!r}, expected uint16 or uint32")
    for key in ("vocab_size", "vocab_sha256", "shards", "counts", "vocab"):
        if key not in m:
            bad(f"no \"{key}\" field")
    if not isinstance(m["vocab_size"], int) or isinstance(m["vocab_size"], bool) or m["vocab_size"] < 5:
        bad(f"\"vocab_size\" is {m['vocab_size']!r}, expected a token count")
    counts = m["counts"]
    if not isinstance(counts, dict) or any(not isinstance(counts.get(k), int) for k in ("documents", "sentences",
                                                                                        "tokens")):
        bad("\"counts\" needs integer documents, sentences and tokens")
    vocab = m["vocab"]
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab) or len(vocab) != m["vocab_size"]:
        bad(f"\"vocab\" is not a list of {m['vocab_size']!r} tokens")
    if vocab_sha256(vocab) != m["vocab_sha256"]:
        bad("\"vocab\" does not match \"vocab_sha256\"")
    special = m.get("special_ids")
    for key, token in (("pad", "[PAD]"), ("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("mask", "[MASK]")):
        i = special.get(key) if isinstance(special, dict) else None
        if not isinstance(i, int) or not 0 <= i < len(vocab) or vocab[i] != token:
            bad(f"\"special_ids\".{key} is {i!r}, but {token} is at id "
                f"{vocab.index(token) if token in vocab else 'none'}")
    if not isinstance(m["shards"], list) or not m["shards"]:
        bad("\"shards\" is not a non-empty list")
    for i, sh in enumerate(m["shards"]):
        if not isinstance(sh, dict) or not isinstance(sh.get("name"), str) or "/" in sh["name"] or any(
                not isinstance(sh.get(k), int) or isinstance(sh.get(k), bool) or sh[k] < 0
                for k in ("tokens", "sentences", "documents")):
            bad(f"shards[{i}] needs a name and non-negative token, sentence and document counts")


def check_vocab_files(folder: str | os.PathLike, manifest: dict) -> None:
    """The folder's tokenizer.json and vocab.txt must hold the vocabulary the shards were tokenized with (the
    manifest's): ids in the shards are only meaningful with it, and training copies these files into every
    model folder it writes."""
    folder = Path(folder)
    found = False
    for name in ("tokenizer.json", "vocab.txt"):
        path = folder / name
        if not path.exists():
            continue
        found = True
        try:
            tokens = vocab_list(Tokenizer.from_file(path))
        except TokenizerError as e:
            raise DataError(f"{e}; the dataset is damaged, prepare it again") from None
        if vocab_sha256(tokens) != manifest["vocab_sha256"]:
            first = next((i for i, (a, b) in enumerate(zip(tokens, manifest["vocab"])) if a != b),
                         min(len(tokens), len(manifest["vocab"])))
            raise DataError(f"{path}: not the vocabulary the shards were made with ({len(tokens):,} tokens, "
                            f"manifest.json {len(manifest['vocab']):,}; first difference at id {first}); "
                            "restore it or prepare the dataset again")
    if not found:
        raise DataError(f"{folder}: holds neither tokenizer.json nor vocab.txt; the dataset is damaged, "
                        "prepare it again")


def load_index(path: Path, count: int, end: int, unit: str, mmap: bool) -> np.ndarray:
    """A shard's (count+1,) int64 offset array, checked: readable .npy, right dtype and length, starting at 0,
    ending at `end` (the shard's number of `unit`s); the small document index is also checked to be sorted.
    Truncated, rewritten or garbage files are one DataError naming the file, not a numpy traceback."""
    damaged = "the dataset is damaged, prepare it again"
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable .npy array ({msg}); {damaged}") from None
    if arr.dtype != np.int64 or arr.ndim != 1:
        raise DataError(f"{path}: holds a {arr.dtype} array of shape {arr.shape}, expected int64 offsets; {damaged}")
    if len(arr) != count + 1:
        raise DataError(f"{path}: holds {len(arr)} offsets, manifest.json says {count + 1}; {damaged}")
    if int(arr[0]) != 0 or int(arr[-1]) != end:
        raise DataError(f"{path}: offsets run from {int(arr[0])} to {int(arr[-1])}, expected 0 to {end} "
                        f"({unit}s in the shard); {damaged}")
    if not mmap and len(arr) > 1 and bool((np.diff(arr) < 0).any()):
        raise DataError(f"{path}: offsets are not in increasing order; {damaged}")
    return arr


def check_shard_files(folder: str | os.PathLike, manifest: dict) -> None:
    """Every shard's token file has the manifest's size and its offset arrays pass `load_index` (headers and
    ends only: cheap, so a training run can check a folder before it writes anything)."""
    folder = Path(folder)
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for sh in manifest["shards"]:
        stem = folder / sh["name"]
        bin_path = stem.with_name(stem.name + ".tokens.bin")
        try:
            size = bin_path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"{bin_path}: missing shard file; the dataset is damaged, prepare it again") from None
        if size != sh["tokens"] * itemsize:
            raise DataError(f"{bin_path}: size does not match manifest.json ({sh['tokens']} tokens); "
                            "the dataset is damaged, prepare it again")
        for suffix, count, end, unit in ((".sentences.npy", sh["sentences"], sh["tokens"], "token"),
                                         (".documents.npy", sh["documents"], sh["sentences"], "sentence")):
            path = stem.with_name(stem.name + suffix)
            if not path.is_file():
                raise DataError(f"{path}: missing shard file; the dataset is damaged, prepare it again")
            load_index(path, count, end, unit, mmap=True)
