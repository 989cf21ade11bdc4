"""BERT WordPiece tokenizer for MobileBERT, built on the Hugging Face `tokenizers` library.

MobileBERT uses BERT's uncased WordPiece vocabulary (30,522 tokens). This module loads it from a
`vocab.txt`, a `tokenizer.json` or a folder holding either, encodes single sentences and pairs with
[CLS]/[SEP] and segment ids, and trains new vocabularies (`mobilebert vocab train`) for other
languages and domains. We call `tokenizers` directly rather than transformers' `BertTokenizerFast`,
which in transformers 5.x silently ignores `vocab_file=`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from mobilebert import atomic
from mobilebert.errors import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")


class TokenizerError(DataError):
    """A tokenizer file is missing or malformed; the message names the file (a user error: exit 2)."""


@dataclass
class Encoding:
    """One encoded example: ids with special tokens, segment ids, mask and character offsets."""

    input_ids: list[int]
    token_type_ids: list[int]
    attention_mask: list[int]
    offsets: list[tuple[int, int]] = field(default_factory=list)
    # 0 for tokens of the first text, 1 for the second, None for special tokens and padding.
    sequence_ids: list[int | None] = field(default_factory=list)


class Tokenizer:
    """BERT WordPiece tokenizer. `backend` is the underlying `tokenizers.Tokenizer`."""

    def __init__(self, backend: _HFTokenizer, source: str | os.PathLike | None = None):
        self.backend = backend
        self.source = source   # the file it was read from (named in error messages), or None
        where = f"{source}: " if source is not None else ""
        for tok in SPECIAL_TOKENS:
            if backend.token_to_id(tok) is None:
                raise TokenizerError(f"{where}vocabulary has no {tok} token")
        self.pad_id = backend.token_to_id("[PAD]")
        self.unk_id = backend.token_to_id("[UNK]")
        self.cls_id = backend.token_to_id("[CLS]")
        self.sep_id = backend.token_to_id("[SEP]")
        self.mask_id = backend.token_to_id("[MASK]")

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_vocab(cls, vocab_file: str | os.PathLike, lowercase: bool | None = None) -> "Tokenizer":
        """Build the standard BERT pipeline around a `vocab.txt` (one token per line)."""
        path = Path(vocab_file)
        if not path.is_file():
            raise TokenizerError(f"{path}: vocabulary file not found")
        try:
            tokens = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{path}: not a UTF-8 text vocabulary ({e.reason} at byte {e.start})") from None
        if not tokens:
            raise TokenizerError(f"{path}: empty vocabulary (expected one token per line)")
        vocab: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            tok = tok.rstrip("\r")
            if tok == "":
                raise TokenizerError(f"{path}:{i + 1}: empty line in vocabulary")
            if tok in vocab:
                # The line number is the token id: a second copy would leave a hole in the ids, and every id
                # after it would differ between this file, tokenizer.json and prepared shards.
                raise TokenizerError(f"{path}:{i + 1}: token {tok!r} is already on line {vocab[tok] + 1}; "
                                     "a vocabulary lists each token once")
            vocab[tok] = i
        if lowercase is None:
            # An uncased vocabulary holds no upper-case word pieces (apart from the special tokens).
            lowercase = not any(t != t.lower() for t in vocab if not (t.startswith("[") and t.endswith("]")))
        return cls(_bert_pipeline(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100), lowercase),
                   path)

    @classmethod
    def from_file(cls, path: str | os.PathLike, lowercase: bool | None = None) -> "Tokenizer":
        """Load from `vocab.txt`, `tokenizer.json`, or a folder holding one of them."""
        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                path = path / "tokenizer.json"
            elif (path / "vocab.txt").is_file():
                path = path / "vocab.txt"
            else:
                raise TokenizerError(f"{path}: folder holds neither tokenizer.json nor vocab.txt")
        if not path.exists():
            raise TokenizerError(f"{path}: tokenizer file not found")
        if path.suffix == ".json":
            try:
                backend = _HFTokenizer.from_file(str(path))
            except Exception as e:  # tokenizers raises a bare Exception on bad JSON
                raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from None
            ids = sorted(backend.get_vocab().values())
            gap = next((k for k, i in enumerate(ids) if i != k), None)
            if gap is not None:
                # vocab.txt (line = id) cannot express a hole: ids after it would shift when it is saved.
                raise TokenizerError(f"{path}: token ids are not 0..{len(ids) - 1} without gaps (no token has id "
                                     f"{gap}, or two tokens share one)")
            backend.no_truncation()
            backend.no_padding()
            return cls(backend, path)
        return cls.from_vocab(path, lowercase=lowercase)

    def save(self, folder: str | os.PathLike) -> None:
        """Write `tokenizer.json` and `vocab.txt` (the latter for BERT tools that want it)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # written by mobilebert.atomic (the text `backend.save` would write): never half a file under its name
        atomic.write_text(folder / "tokenizer.json", self.backend.to_str(pretty=True))
        vocab = sorted(self.backend.get_vocab().items(), key=lambda kv: kv[1])
        atomic.write_text(folder / "vocab.txt", "".join(t + "\n" for t, _ in vocab))

    # ----------------------------------------------------------------- vocab
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.backend.id_to_token(i) for i in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    # ----------------------------------------------------------------- encoding
    def tokenize_ids(self, texts: list[str]) -> list[list[int]]:
        """Word-piece ids without special tokens, for many texts at once (parallel in Rust)."""
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def tokenize(self, text: str) -> list[str]:
        return self.backend.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str, pair: str | None = None, max_length: int | None = 512,
               truncation: str = "longest_first") -> Encoding:
        return self.encode_batch([text], None if pair is None else [pair], max_length, truncation)[0]

    def encode_batch(self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = 512,
                     truncation: str = "longest_first", padding: str | None = None) -> list[Encoding]:
        """Encode texts (and pairs) as `[CLS] a [SEP] (b [SEP])`.

        truncation: longest_first | only_first | only_second | do_not_truncate.
        padding: None, "longest" (to the longest in the batch) or "max_length".
        """
        if truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation={truncation!r}: choose one of {', '.join(TRUNCATION_STRATEGIES)}")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs")
        if truncation == "do_not_truncate" or max_length is None:
            self.backend.no_truncation()
        else:
            self.backend.enable_truncation(max_length, strategy=truncation)
        if padding == "max_length" and max_length is not None:
            self.backend.enable_padding(pad_id=self.pad_id, pad_token="[PAD]", length=max_length)
        elif padding in ("longest", "max_length"):
            self.backend.enable_padding(pad_id=self.pad_id, pad_token="[PAD]")
        elif padding is None:
            self.backend.no_padding()
        else:
            raise ValueError(f"padding={padding!r}: choose None, 'longest' or 'max_length'")
        try:
            inputs = list(texts) if pairs is None else list(zip(texts, pairs))
            out = self.backend.encode_batch(inputs)
        except Exception as e:  # e.g. "Truncation error: Second sequence not provided"
            raise ValueError(f"tokenizer: {e}") from None
        finally:
            self.backend.no_truncation()
            self.backend.no_padding()
        return [Encoding(e.ids, e.type_ids, e.attention_mask, e.offsets, e.sequence_ids) for e in out]

    def __call__(self, texts: list[str] | str, pairs: list[str] | str | None = None, max_length: int | None = 512,
                 truncation: str = "longest_first", padding: str = "longest"):
        """Encode a batch and return a dict of LongTensors (input_ids, token_type_ids, attention_mask)."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
            pairs = None if pairs is None else [pairs]
        encs = self.encode_batch(texts, pairs, max_length, truncation, padding)
        return {
            "input_ids": torch.tensor([e.input_ids for e in encs], dtype=torch.long),
            "token_type_ids": torch.tensor([e.token_type_ids for e in encs], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encs], dtype=torch.long),
        }


def vocab_difference(a: Tokenizer, b: Tokenizer) -> str | None:
    """None when two tokenizers map the same tokens to the same ids, else where they first differ (for messages):
    a model's embeddings are indexed by the ids of the vocabulary it was trained with."""
    ta, tb = (sorted(t.backend.get_vocab(), key=t.backend.get_vocab().get) for t in (a, b))
    if ta == tb:
        return None
    k = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    return f"{len(ta):,} vs {len(tb):,} tokens, first difference at id {k}"


def _bert_pipeline(model: WordPiece, lowercase: bool) -> _HFTokenizer:
    """The BERT normalizer, pre-tokenizer, [CLS]/[SEP] template and WordPiece decoder."""
    tok = _HFTokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def train_wordpiece(files: list[str], vocab_size: int = 30522, lowercase: bool = True,
                    min_frequency: int = 2, limit_alphabet: int = 1000, skip_bad_files: bool = False,
                    report=None, skipped: list[dict] | None = None) -> Tokenizer:
    """Train a new BERT WordPiece vocabulary on a plain-text corpus.

    `files` are read exactly as `mobilebert data prepare` reads a corpus (mobilebert.data.corpus: files, folders,
    globs, .gz/.bz2/.xz, hf:NAME; binary and UTF-16 files refused, or skipped and appended to `skipped` with
    `skip_bad_files`; lines that are not UTF-8 decoded as cp1252 and counted in `report`, an EncodingReport)."""
    from mobilebert.data.corpus import EncodingReport, iter_lines, resolve_corpus

    if not files:
        raise TokenizerError("no corpus files given")
    sources, bad = resolve_corpus(files, skip_bad_files)
    report = report if report is not None else EncodingReport()
    skipped = skipped if skipped is not None else []
    skipped.extend(bad)
    backend = _HFTokenizer(WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, limit_alphabet=limit_alphabet,
                               special_tokens=SPECIAL_TOKENS, continuing_subword_prefix="##",
                               show_progress=sys.stderr.isatty())
    lines = (line for line, _ in iter_lines(sources, report, skipped if skip_bad_files else None))
    backend.train_from_iterator(lines, trainer=trainer)
    vocab = backend.get_vocab()
    return Tokenizer(_bert_pipeline(WordPiece(vocab, unk_token="[UNK]"), lowercase))



MAX_VOCAB = 1_000_000   # far above real WordPiece vocabularies (BERT 30,522; multilingual BERT 119,547)


def train_vocab(corpus: list[str], out, vocab_size: int = 30522, min_frequency: int = 2, cased: bool = False,
                skip_bad_files: bool = False) -> int:
    """The `mobilebert vocab train` job: check the options and `out`, train, save vocab.txt + tokenizer.json
    in `out` and print what was read; exit status 0 (errors raise UserError)."""
    from mobilebert.data.corpus import EncodingReport
    from mobilebert.errors import UserError
    from mobilebert.outpaths import check_out_dir

    if not 10 <= vocab_size <= MAX_VOCAB:
        # The upper bound keeps the trainer (Rust) from aborting the process on a huge allocation.
        raise UserError(f"--vocab-size {vocab_size}: must be between 10 and {MAX_VOCAB:,}")
    if min_frequency < 0:
        raise UserError(f"--min-frequency {min_frequency}: must be 0 or more")
    out = check_out_dir(out, "--out")
    for name in ("vocab.txt", "tokenizer.json"):
        if (out / name).exists():
            raise UserError(f"--out {out}: already holds a {name}; choose another --out")
    report, skipped = EncodingReport(), []
    tok = train_wordpiece(corpus, vocab_size=vocab_size, lowercase=not cased, min_frequency=min_frequency,
                          skip_bad_files=skip_bad_files, report=report, skipped=skipped)
    if tok.vocab_size <= 5:
        raise UserError(f"{', '.join(corpus)}: no text to learn word pieces from (the corpus is empty)")
    tok.save(out)
    for f in report.as_list():
        print(f"encoding: {f['file']}: {f['lines']:,} line{'s' if f['lines'] != 1 else ''} not UTF-8, "
              f"decoded as {f['encoding']}")
    for s in skipped:
        print(f"warning: skipped {s['file']}: {s['reason']}", file=sys.stderr)
    print(f"trained a {tok.vocab_size}-token WordPiece vocabulary: {Path(out) / 'vocab.txt'}")
    return 0

def tokenizer_config_json(lowercase: bool = True) -> str:
    """A minimal `tokenizer_config.json` so transformers' AutoTokenizer can read our saved folders."""
    return json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase,
                       "model_max_length": 512}, indent=2) + "\n"
