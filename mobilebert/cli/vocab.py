"""`mobilebert vocab train CORPUS... --out DIR`: a new WordPiece vocabulary for another language or domain.

The corpus is found and read as `mobilebert data prepare` reads it (mobilebert.data.corpus): binary files are
refused (or skipped with --skip-bad-files), lines that are not UTF-8 are decoded as cp1252 and reported."""

import argparse
import sys

MAX_VOCAB = 1_000_000   # far above real WordPiece vocabularies (BERT 30,522; multilingual BERT 119,547)


def add_parser(sub) -> None:
    p = sub.add_parser("vocab", help="build a WordPiece vocabulary")
    vsub = p.add_subparsers(dest="vocab_command", required=True, metavar="ACTION")
    t = vsub.add_parser("train", help="train a BERT WordPiece vocabulary on plain-text files or folders")
    t.add_argument("corpus", nargs="+", help="text files, folders (searched recursively), globs or hf:NAME")
    t.add_argument("--out", required=True, help="output folder for vocab.txt and tokenizer.json")
    t.add_argument("--vocab-size", type=int, default=30522)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--cased", action="store_true", help="keep case (default: lower-case, like bert-base-uncased)")
    t.add_argument("--skip-bad-files", action="store_true",
                   help="skip binary or unreadable files with a warning instead of stopping")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mobilebert.data.corpus import EncodingReport
    from mobilebert.errors import UserError
    from mobilebert.outpaths import check_out_dir
    from mobilebert.tokenizer import train_wordpiece

    if not 10 <= args.vocab_size <= MAX_VOCAB:
        # The upper bound keeps the trainer (Rust) from aborting the process on a huge allocation.
        raise UserError(f"--vocab-size {args.vocab_size}: must be between 10 and {MAX_VOCAB:,}")
    if args.min_frequency < 0:
        raise UserError(f"--min-frequency {args.min_frequency}: must be 0 or more")
    out = check_out_dir(args.out, "--out")
    for name in ("vocab.txt", "tokenizer.json"):
        if (out / name).exists():
            raise UserError(f"--out {out}: already holds a {name}; choose another --out")
    report, skipped = EncodingReport(), []
    tok = train_wordpiece(args.corpus, vocab_size=args.vocab_size, lowercase=not args.cased,
                          min_frequency=args.min_frequency, skip_bad_files=args.skip_bad_files, report=report,
                          skipped=skipped)
    if tok.vocab_size <= 5:
        raise UserError(f"{', '.join(args.corpus)}: no text to learn word pieces from (the corpus is empty)")
    tok.save(out)
    for f in report.as_list():
        print(f"encoding: {f['file']}: {f['lines']:,} line{'s' if f['lines'] != 1 else ''} not UTF-8, "
              f"decoded as {f['encoding']}")
    for s in skipped:
        print(f"warning: skipped {s['file']}: {s['reason']}", file=sys.stderr)
    print(f"trained a {tok.vocab_size}-token WordPiece vocabulary: {Path(out) / 'vocab.txt'}")
    return 0
