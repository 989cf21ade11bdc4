"""The `mobilebert export` job: a checkpoint folder to an ONNX or ExecuTorch file, checked against PyTorch.

Paper §5 (deployment). Picks the head (`task`, else the checkpoint's `architectures`) and refuses one the
checkpoint has no weights for; picks the vocabulary (the checkpoint's own, or `vocab` when it is the same
one) to make real check inputs and to embed in the file; then `export_onnx` / `export_executorch` run the
exported model at two shapes beside PyTorch and keep the file only when every output agrees within `rtol`.
"""

from __future__ import annotations

from pathlib import Path

from mobilebert.checkpoint import head_for_architecture, load_config, require_heads
from mobilebert.errors import UserError
from mobilebert.outpaths import check_out_file


def export_checkpoint(model_dir, out, format: str, task: str | None = None, vocab=None, rtol: float = 1e-4,
                      fold_nonorm: bool = False, fuse: bool = False, opset: int = 17, max_seq: int | None = None,
                      max_batch: int = 16, int8: bool = False) -> int:
    """Export, print each output's differences and the file written; exit status 0 (errors raise UserError)."""
    from mobilebert.export.onnx import export_onnx, find_vocab, load_for_export

    check_out_file(out, "--out")
    if not rtol > 0:
        raise UserError(f"--rtol {rtol}: must be a positive number")
    if format == "executorch" and ((max_seq is not None and max_seq < 3) or max_batch < 1):
        raise UserError(f"--max-seq {max_seq} / --max-batch {max_batch}: need a sequence of at least 3 "
                        "tokens ([CLS] x [SEP]) and a batch of at least 1")
    if Path(model_dir).exists():
        # A head missing from the checkpoint would be exported freshly initialised: outputs of random weights.
        arch = task or (load_config(model_dir).architectures or ["MobileBertModel"])[0]
        require_heads(model_dir, head_for_architecture(arch), f"--task {arch}" if task else "model",
                      "the exported model would compute its outputs with random weights")
    model = load_for_export(model_dir, task=task)
    vocab_path = find_vocab(model_dir, vocab)
    tokenizer = None
    if vocab_path is not None:
        from mobilebert.tokenizer import Tokenizer, vocab_difference

        tokenizer = Tokenizer.from_file(vocab_path)
        own = find_vocab(model_dir) if vocab else None
        diff = vocab_difference(tokenizer, Tokenizer.from_file(own)) if own is not None else None
        if diff:   # the file would carry a vocabulary whose ids do not match its embeddings
            raise UserError(f"--vocab {vocab}: not the vocabulary saved with the checkpoint ({own}: {diff}); "
                            "leave --vocab out to embed the checkpoint's own")
    else:
        print("note: no vocabulary found; checking on random token ids (pass --vocab for real text)")
    if format == "onnx":
        report = export_onnx(model, out, opset=opset, rtol=rtol, tokenizer=tokenizer, vocab_path=vocab_path,
                             fold_nonorm=fold_nonorm, fuse=fuse)
    else:
        from mobilebert.export.mobile import export_executorch

        report = export_executorch(model, out, max_seq=max_seq, rtol=rtol, tokenizer=tokenizer,
                                   vocab_path=vocab_path, fold_nonorm=fold_nonorm, int8=int8, max_batch=max_batch,
                                   fuse=fuse)
    for d in report.diffs:
        print(f"  {d}")
    size = Path(out).stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB): matches PyTorch within rtol {rtol:g}")
    return 0
