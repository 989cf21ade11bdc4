"""`mobilebert data prepare|inspect`: build pre-training shards from text, and look at the examples they give.

prepare is the tokenization step of BERT's create_pretraining_data.py (see mobilebert/data/shards.py); inspect
prints the manifest and a few MLM + NSP examples as the training job will draw them (mobilebert/data/pretraining.py).
Both jobs are in mobilebert/data/console.py.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="prepare pre-training data (tokenize a corpus into shards)",
                              description="Prepare and inspect pre-training data.")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    prep = sub.add_parser(
        "prepare", help="tokenize text files into memory-mapped shards",
        description="Tokenize plain-text corpora (one sentence or paragraph per line, a blank line between "
                    "documents) into sharded token arrays for pre-training. CORPUS is a file, a folder (read "
                    "recursively), a glob pattern, a .gz/.bz2/.xz file, or hf:NAME[:CONFIG[:SPLIT]] for a Hugging "
                    "Face dataset (needs the `datasets` package and a network connection).")
    prep.add_argument("corpus", nargs="+", metavar="CORPUS", help="text files, folders, globs or hf:NAME")
    prep.add_argument("--vocab", required=True, metavar="PATH",
                      help="vocab.txt, tokenizer.json or a folder holding one of them")
    prep.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    prep.add_argument("--workers", type=int, default=None, metavar="N",
                      help="tokenizer processes (default: one per CPU core)")
    prep.add_argument("--shard-tokens", type=int, default=None, metavar="N",
                      help="start a new shard after about N tokens (default 67,108,864)")
    prep.add_argument("--overwrite", action="store_true", help="replace a dataset already prepared in --out")
    prep.add_argument("--skip-bad-files", action="store_true",
                      help="skip binary or unreadable files with a warning instead of stopping")
    prep.add_argument("--documents", choices=["blank-line", "file"], default="blank-line",
                      help="what ends a document: a blank line (BERT, default) or the end of each file "
                           "(for books with blank lines between paragraphs)")
    prep.add_argument("--text-column", default="text", metavar="NAME", help="column of hf: datasets (default text)")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=run_prepare)

    ins = sub.add_parser("inspect", help="print a prepared dataset's summary and a few examples",
                         description="Print the manifest of a prepared folder and a few MLM + NSP examples.")
    ins.add_argument("dir", metavar="DIR", help="folder made by `mobilebert data prepare`")
    ins.add_argument("-n", "--num-examples", type=int, default=3, metavar="N", help="examples to print (default 3)")
    ins.add_argument("--seq-len", type=int, default=128, help="sequence length (default 128)")
    ins.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    ins.add_argument("--whole-word", action="store_true", help="whole-word masking")
    ins.add_argument("--no-nsp", action="store_true", help="single segments, no next-sentence pairs")
    ins.set_defaults(func=run_inspect)


def run_prepare(args: argparse.Namespace) -> int:
    from mobilebert.data.console import prepare_corpus

    return prepare_corpus(args.corpus, args.vocab, args.out, workers=args.workers, shard_tokens=args.shard_tokens,
                          overwrite=args.overwrite, skip_bad_files=args.skip_bad_files,
                          text_column=args.text_column, documents=args.documents, quiet=args.quiet)


def run_inspect(args: argparse.Namespace) -> int:
    from mobilebert.data.console import inspect_dataset

    return inspect_dataset(args.dir, num_examples=args.num_examples, seq_len=args.seq_len, seed=args.seed,
                           whole_word=args.whole_word, nsp=not args.no_nsp)
