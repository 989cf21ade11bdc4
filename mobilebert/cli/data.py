"""`mobilebert data prepare|inspect`: build pre-training shards from text, and look at the examples they give.

prepare is the tokenization step of BERT's create_pretraining_data.py (see mobilebert/data/shards.py); inspect
prints the manifest and a few MLM + NSP examples as the training job will draw them (mobilebert/data/pretraining.py).
"""

from __future__ import annotations

import argparse
import sys


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
    from mobilebert.atomic import SPACE_ERRORS, disk_errors
    from mobilebert.data.shards import DEFAULT_SHARD_TOKENS, prepare

    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = max(total, done)
        bar.n = done
        bar.refresh()

    try:
        with disk_errors(args.out, SPACE_ERRORS):  # a full disk: one line naming the output folder
            m = prepare(args.corpus, args.vocab, args.out, workers=args.workers,
                        shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS, overwrite=args.overwrite,
                        skip_bad_files=args.skip_bad_files, text_column=args.text_column,
                        documents=args.documents,
                        progress=progress if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    c = m["counts"]
    print(f"prepared {args.out}: {c['files']:,} files, {c['documents']:,} documents, {c['sentences']:,} lines, "
          f"{c['tokens']:,} tokens in {len(m['shards'])} shard{'s' if len(m['shards']) != 1 else ''} "
          f"({m['dtype']}, vocab {m['vocab_size']:,}) in {m['seconds']:.1f} s")
    fb = m["encoding_fallbacks"]
    if fb:
        print(f"encoding: {len(fb)} file{'s' if len(fb) != 1 else ''} not (entirely) UTF-8, decoded with a fallback:")
        for f in fb:
            print(f"  {f['file']}: {f['lines']:,} line{'s' if f['lines'] != 1 else ''} as {f['encoding']}")
    for s in m["skipped_files"]:
        print(f"warning: skipped {s['file']}: {s['reason']}", file=sys.stderr)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from mobilebert.data.pretraining import IGNORE_INDEX, MaskingConfig, PretrainingData
    from mobilebert.errors import UserError

    if args.num_examples < 0:
        raise UserError(f"--num-examples {args.num_examples}: must be 0 or more")
    data = PretrainingData(args.dir, seq_len=args.seq_len, seed=args.seed,
                           masking=MaskingConfig(whole_word=args.whole_word, nsp=not args.no_nsp))
    m, tok = data.corpus.manifest, data.corpus.load_tokenizer()
    c = m["counts"]
    print(f"{args.dir}: {c['documents']:,} documents, {c['sentences']:,} lines, {c['tokens']:,} tokens, "
          f"{len(m['shards'])} shard{'s' if len(m['shards']) != 1 else ''}, vocab {m['vocab_size']:,} (sha256 {m['vocab_sha256'][:12]})")
    print(f"examples per epoch at seq_len {args.seq_len}: {len(data):,}")
    for i in range(min(args.num_examples, len(data))):   # one epoch at most
        ex = data.example(i)
        n = int(ex["attention_mask"].sum())
        ids, labels = ex["input_ids"][:n].tolist(), ex["labels"][:n].tolist()
        words = []
        for t, lab in zip(tok.convert_ids_to_tokens(ids), labels):
            words.append(t if lab == IGNORE_INDEX else f"{t}<{tok.convert_ids_to_tokens([lab])[0]}>")
        nsp = {0: "B follows A", 1: "random B"}.get(int(ex["next_sentence_label"]), "no NSP")
        print(f"\nexample {i} ({n} tokens, {sum(lab != IGNORE_INDEX for lab in labels)} masked, {nsp}):")
        print(" ".join(words))
    return 0
