"""The `mobilebert data prepare|inspect` jobs: what the user sees around shards.py and pretraining.py.

prepare: `shards.prepare` (the tokenization half of BERT's create_pretraining_data.py) with a progress bar on a
terminal, a full disk reported as one line naming the output folder, and a summary of the counts, the files
decoded with an encoding fallback and the files skipped. inspect: a prepared folder's manifest and a few
MLM + NSP examples exactly as the training job draws them (`pretraining.PretrainingData`), masked tokens
shown as `token<original>`.
"""

from __future__ import annotations

import sys

from mobilebert.errors import UserError


def prepare_corpus(corpus, vocab, out, workers: int | None = None, shard_tokens: int | None = None,
                   overwrite: bool = False, skip_bad_files: bool = False, text_column: str = "text",
                   documents: str = "blank-line", quiet: bool = False) -> int:
    """Tokenize `corpus` into shards in `out` and print what was prepared; exit status 0."""
    from mobilebert.atomic import SPACE_ERRORS, disk_errors
    from mobilebert.data.shards import DEFAULT_SHARD_TOKENS, prepare

    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = max(total, done)
        bar.n = done
        bar.refresh()

    try:
        with disk_errors(out, SPACE_ERRORS):  # a full disk: one line naming the output folder
            m = prepare(corpus, vocab, out, workers=workers, shard_tokens=shard_tokens or DEFAULT_SHARD_TOKENS,
                        overwrite=overwrite, skip_bad_files=skip_bad_files, text_column=text_column,
                        documents=documents, progress=progress if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    c = m["counts"]
    print(f"prepared {out}: {c['files']:,} files, {c['documents']:,} documents, {c['sentences']:,} lines, "
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


def inspect_dataset(folder, num_examples: int = 3, seq_len: int = 128, seed: int = 0, whole_word: bool = False,
                    nsp: bool = True) -> int:
    """Print the manifest of a prepared folder and its first `num_examples` examples (one epoch at most)."""
    from mobilebert.data.pretraining import IGNORE_INDEX, MaskingConfig, PretrainingData

    if num_examples < 0:
        raise UserError(f"--num-examples {num_examples}: must be 0 or more")
    data = PretrainingData(folder, seq_len=seq_len, seed=seed, masking=MaskingConfig(whole_word=whole_word, nsp=nsp))
    m, tok = data.corpus.manifest, data.corpus.load_tokenizer()
    c = m["counts"]
    print(f"{folder}: {c['documents']:,} documents, {c['sentences']:,} lines, {c['tokens']:,} tokens, "
          f"{len(m['shards'])} shard{'s' if len(m['shards']) != 1 else ''}, vocab {m['vocab_size']:,} (sha256 {m['vocab_sha256'][:12]})")
    print(f"examples per epoch at seq_len {seq_len}: {len(data):,}")
    for i in range(min(num_examples, len(data))):   # one epoch at most
        ex = data.example(i)
        n = int(ex["attention_mask"].sum())
        ids, labels = ex["input_ids"][:n].tolist(), ex["labels"][:n].tolist()
        words = []
        for t, lab in zip(tok.convert_ids_to_tokens(ids), labels):
            words.append(t if lab == IGNORE_INDEX else f"{t}<{tok.convert_ids_to_tokens([lab])[0]}>")
        kind = {0: "B follows A", 1: "random B"}.get(int(ex["next_sentence_label"]), "no NSP")
        print(f"\nexample {i} ({n} tokens, {sum(lab != IGNORE_INDEX for lab in labels)} masked, {kind}):")
        print(" ".join(words))
    return 0
