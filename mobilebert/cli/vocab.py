"""`mobilebert vocab train CORPUS... --out DIR`: a new WordPiece vocabulary for another language or domain.

The corpus is found and read as `mobilebert data prepare` reads it (mobilebert.data.corpus): binary files are
refused (or skipped with --skip-bad-files), lines that are not UTF-8 are decoded as cp1252 and reported."""

import argparse


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
    from mobilebert.tokenizer import train_vocab

    return train_vocab(args.corpus, args.out, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                       cased=args.cased, skip_bad_files=args.skip_bad_files)
