"""Finding and reading plain-text pre-training corpora (the input side of `mobilebert data prepare`).

Implements the input format of BERT's `create_pretraining_data.py` (paper-and-official-code.md §2.1: MobileBERT
uses "exact identical data processing script ... as BERT"): one sentence or paragraph per line, a blank
(whitespace-only) line between documents, every line stripped. We add that a file boundary is also a document
boundary. Corpora are given as files, folders (read recursively, hidden entries skipped), glob patterns, `.gz` /
`.bz2` / `.xz` files, or `hf:NAME[:CONFIG[:SPLIT]]` for a Hugging Face `datasets` corpus (each row one document,
its non-blank lines the sentences; needs `datasets` and a network connection).

Everything streams line by line so corpora far larger than RAM pass through with bounded memory. Lines that are
not valid UTF-8 are decoded as cp1252 (latin-1 for the five bytes cp1252 leaves undefined) and counted in an
`EncodingReport`, so the caller can say which files fell back. Binary files (NUL bytes or many control bytes)
raise a `DataError` naming the file, unless the caller asked to skip them.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import lzma
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from mobilebert.errors import DataError

BLOCK_BYTES = 1 << 20  # read ~1 MiB of whole lines at a time: fast UTF-8 decoding of the common case
SNIFF_BYTES = 1 << 16  # bytes looked at (head, middle and tail) when checking that a file is text
DOCUMENT_MODES = ("blank-line", "file")  # what ends a document: a blank line (BERT) or only the file's end
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# Control bytes that never occur in text (tab, newlines, form feed and ESC are allowed).
_CONTROL = bytes(b for b in range(32) if b not in (8, 9, 10, 12, 13, 27)) + b"\x7f"


@dataclass
class CorpusSource:
    """One input: a local file (`path`) or a Hugging Face dataset (`hf` = (name, config, split))."""

    name: str
    path: Path | None = None
    hf: tuple[str, str | None, str] | None = None
    size: int = 0  # bytes on disk (compressed size for .gz etc.; 0 for hf)
    text_column: str = "text"  # hf only: the column holding the text


@dataclass
class EncodingReport:
    """Which files were not (entirely) UTF-8: file name -> Counter(encoding -> number of lines)."""

    fallbacks: dict[str, Counter] = field(default_factory=dict)

    def add(self, name: str, encoding: str, lines: int = 1) -> None:
        self.fallbacks.setdefault(name, Counter())[encoding] += lines

    def as_list(self) -> list[dict]:
        return [{"file": f, "encoding": "/".join(sorted(c)), "lines": sum(c.values())}
                for f, c in self.fallbacks.items()]


def parse_hf_name(spec: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG[:SPLIT]]` -> (name, config or None, split; default "train")."""
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"{spec}: expected hf:NAME[:CONFIG[:SPLIT]], for example hf:wikitext:wikitext-103-raw-v1:train")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 else "") or None, (parts[2] if len(parts) > 2 else "") or "train"
    return name, config, split


def _open(path: Path):
    opener = _OPENERS.get(path.suffix.lower())
    return opener(path, "rb") if opener else open(path, "rb")


def sniff_binary(path: Path) -> str | None:
    """Return why `path` does not look like text (None if it does): NUL bytes or >10% control bytes."""
    try:
        with _open(path) as fh:
            chunks = [fh.read(SNIFF_BYTES)]
            if not isinstance(fh, (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)):
                size = path.stat().st_size
                for pos in (size // 2, size - SNIFF_BYTES):  # the middle and the tail, cheaply
                    if pos > SNIFF_BYTES:
                        fh.seek(pos)
                        chunks.append(fh.read(SNIFF_BYTES))
    except (OSError, EOFError, lzma.LZMAError) as e:
        return f"cannot be read ({e})"
    for data in chunks:
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return "looks like UTF-16 text; convert it to UTF-8"
        if b"\x00" in data:
            return "looks binary (NUL bytes)"
        if data and len(data) - len(data.translate(None, _CONTROL)) > 0.1 * len(data):
            return "looks binary (many control bytes)"
    return None


def resolve_corpus(specs: Sequence[str | os.PathLike], skip_bad_files: bool = False,
                   exclude: Sequence[Path] = (), text_column: str = "text") -> tuple[list[CorpusSource], list[dict]]:
    """Expand files, folders, globs and hf: names into a sorted, de-duplicated list of sources.

    Returns (sources, skipped) where skipped lists {"file", "reason"} for binary files passed over with
    `skip_bad_files`; without it a binary file raises `DataError` naming it. Nothing is read beyond sniffing.
    """
    if not specs:
        raise DataError("no corpus given: pass text files, folders, glob patterns or hf:NAME")
    excluded = [Path(p).resolve() for p in exclude]
    files: list[Path] = []
    sources: list[CorpusSource] = []
    for spec in specs:
        s = str(spec)
        if s.startswith("hf:"):
            src = CorpusSource(name=s, hf=parse_hf_name(s), text_column=text_column)
            next(load_hf_rows(src), None)  # fail now (not installed, offline, no such column), not mid-run
            sources.append(src)
            continue
        path = Path(s).expanduser()
        if any(c in s for c in "*?[") and not path.exists():
            matches = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            if not matches:
                raise DataError(f"{s}: no files match this pattern")
            for m in matches:
                files.extend(_walk(Path(m)))
        elif not path.exists():
            raise DataError(f"{s}: no such file or folder")
        else:
            found = _walk(path)
            if path.is_dir() and not found:
                raise DataError(f"{s}: folder holds no files")
            files.extend(found)
    seen: set[Path] = set()
    skipped: list[dict] = []
    for f in files:
        real = f.resolve()
        if real in seen or any(real == x or x in real.parents for x in excluded):
            continue
        seen.add(real)
        reason = sniff_binary(f)
        if reason is not None:
            if not skip_bad_files:
                raise DataError(f"{f}: {reason}; remove it from the corpus or pass --skip-bad-files")
            skipped.append({"file": str(f), "reason": reason})
            continue
        sources.append(CorpusSource(name=str(f), path=f, size=f.stat().st_size))
    if not sources:
        raise DataError(f"{', '.join(map(str, specs))}: no readable text files in the corpus")
    return sources, skipped


def _walk(path: Path) -> list[Path]:
    """A file, or every non-hidden file under a folder (recursively), in sorted order."""
    if path.is_file():
        return [path]
    out = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return out


def _decode_block(block: bytes, name: str, report: EncodingReport) -> list[str]:
    """Decode whole lines: UTF-8 for the block at once, else line by line with a cp1252/latin-1 fallback."""
    try:
        return block.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        pass
    lines = []
    for raw in block.split(b"\n"):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            try:
                lines.append(raw.decode("cp1252"))
                report.add(name, "cp1252")
            except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252
                lines.append(raw.decode("latin-1"))
                report.add(name, "latin-1")
    return lines


def iter_file_lines(source: CorpusSource, report: EncodingReport, skipped: list[dict] | None = None,
                    documents: str = "blank-line") -> Iterator[tuple[str, bool]]:
    """Yield (stripped non-blank line, starts_new_document) for one source; memory is O(one block).

    documents="blank-line" (BERT) ends a document at every blank line; "file" makes each file (or hf row) one
    document, for books whose paragraphs are separated by blank lines.
    """
    if documents not in DOCUMENT_MODES:
        raise DataError(f"documents={documents!r}: choose one of {', '.join(DOCUMENT_MODES)}")
    split_docs = documents == "blank-line"
    if source.hf is not None:
        yield from _iter_hf(source)
        return
    path, new_doc, offset = source.path, True, 0
    try:
        with _open(path) as fh:
            first = True
            while True:
                block = fh.read(BLOCK_BYTES)
                if not block:
                    break
                if not block.endswith(b"\n"):
                    # Finish the last line, but cap it so a file with no newlines cannot fill memory.
                    rest = fh.readline(BLOCK_BYTES * 16)
                    block += rest
                nul = block.find(b"\x00")
                if nul >= 0:
                    reason = f"binary data (NUL byte) at byte {offset + nul}"
                    if skipped is None:
                        raise DataError(f"{path}: {reason}; remove it from the corpus or pass --skip-bad-files")
                    skipped.append({"file": str(path), "reason": reason + "; the text before it was kept"})
                    return
                if first and block.startswith(b"\xef\xbb\xbf"):
                    block = block[3:]  # UTF-8 byte-order mark
                first = False
                offset += len(block)
                lines = _decode_block(block, str(path), report)
                if block.endswith(b"\n"):
                    lines.pop()  # the empty string after the block's final newline is not a blank line
                for line in lines:
                    line = line.strip()
                    if not line:
                        new_doc = new_doc or split_docs  # BERT: a blank line ends the document
                        continue
                    yield line, new_doc
                    new_doc = False
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None


def _iter_hf(source: CorpusSource) -> Iterator[tuple[str, bool]]:
    for row in load_hf_rows(source):
        new_doc = True
        for line in row.split("\n"):
            line = line.strip()
            if line:
                yield line, new_doc
                new_doc = False


def load_hf_rows(source: CorpusSource) -> Iterator[str]:
    """Stream the text column of a Hugging Face dataset (needs `datasets` and a network connection)."""
    try:
        import datasets  # optional dependency, only for hf: corpora
    except ImportError:
        raise DataError(f"{source.name}: reading Hugging Face datasets needs the `datasets` package "
                        "(pip install datasets); or pass local text files") from None
    name, config, split = source.hf
    text_column = source.text_column
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # offline, unknown name, bad config: datasets raises many types
        raise DataError(f"{source.name}: cannot load dataset ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for i, row in enumerate(ds):
        if text_column not in row:
            raise DataError(f"{source.name}: row {i} has no {text_column!r} column (columns: {', '.join(row)})")
        yield row[text_column] or ""


def iter_lines(sources: Sequence[CorpusSource], report: EncodingReport, skipped: list[dict] | None = None,
               documents: str = "blank-line") -> Iterator[tuple[str, bool]]:
    """All sources in order; every source starts a new document."""
    for src in sources:
        yield from iter_file_lines(src, report, skipped, documents)


def read_documents(specs: Sequence[str | os.PathLike], report: EncodingReport | None = None,
                   documents: str = "blank-line") -> list[list[str]]:
    """Small corpora only: the documents (lists of stripped lines) of files, folders or globs."""
    report = report if report is not None else EncodingReport()
    sources, _ = resolve_corpus(specs)
    docs: list[list[str]] = []
    for line, new_doc in iter_lines(sources, report, documents=documents):
        if new_doc:
            docs.append([])
        docs[-1].append(line)
    return docs
