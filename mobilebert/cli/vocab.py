"""`mobilebert vocab train CORPUS... --out DIR`: a new WordPiece vocabulary for another language or domain."""

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("vocab", help="build a WordPiece vocabulary")
    vsub = p.add_subparsers(dest="vocab_command", required=True, metavar="ACTION")
    t = vsub.add_parser("train", help="train a BERT WordPiece vocabulary on plain-text files or folders")
    t.add_argument("corpus", nargs="+", help="text files or folders (searched recursively for files)")
    t.add_argument("--out", required=True, help="output folder for vocab.txt and tokenizer.json")
    t.add_argument("--vocab-size", type=int, default=30522)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--cased", action="store_true", help="keep case (default: lower-case, like bert-base-uncased)")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mobilebert.errors import UserError
    from mobilebert.tokenizer import train_wordpiece

    files = []
    for item in args.corpus:
        path = Path(item)
        if path.is_dir():
            files += sorted(str(f) for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif path.is_file():
            files.append(str(path))
        else:
            raise UserError(f"{path}: no such file or folder")
    if not files:
        raise UserError(f"no files found in {', '.join(args.corpus)}")
    if args.vocab_size < 10:
        raise UserError(f"--vocab-size {args.vocab_size}: too small")
    out = Path(args.out)
    if (out / "vocab.txt").exists():
        raise UserError(f"{out}: already holds a vocab.txt; choose another --out")
    tok = train_wordpiece(files, vocab_size=args.vocab_size, lowercase=not args.cased,
                          min_frequency=args.min_frequency)
    tok.save(out)
    print(f"trained a {tok.vocab_size}-token WordPiece vocabulary on {len(files)} file(s): {out}/vocab.txt")
    return 0
