"""`mobilebert export`: export a checkpoint to ONNX or ExecuTorch, checked against PyTorch first.

    mobilebert export onnx MODEL_DIR --out model.onnx [--task HEAD] [--opset 17] [--rtol 1e-4] [--fold-nonorm | --fuse]
    mobilebert export executorch MODEL_DIR --out model.pte [--task HEAD] [--max-seq 128] [--max-batch 16] [--int8] [--fuse]

Paper §5 (deployment). Before it reports success, the command runs the exported model on real
token ids (sentences tokenized with the checkpoint's vocabulary) at two shapes, compares every output
with the PyTorch model and prints the max absolute and relative differences. A difference over the
tolerance is an error (exit 2) and leaves no file behind.
"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export to ONNX or ExecuTorch, checked against PyTorch",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="format", required=True, metavar="{onnx,executorch}")
    for fmt, suffix in (("onnx", ".onnx"), ("executorch", ".pte")):
        q = sub.add_parser(fmt, help=f"write a {suffix} file ({'ONNX Runtime' if fmt == 'onnx' else 'ExecuTorch, XNNPACK'})")
        q.add_argument("model", help="checkpoint folder (config.json + model.safetensors)")
        q.add_argument("--out", required=True, help=f"output file (*{suffix})")
        q.add_argument("--task", help="head class to load (default: the checkpoint's `architectures`), "
                                      "e.g. MobileBertForSequenceClassification or MobileBertModel")
        q.add_argument("--vocab", help="vocab.txt / tokenizer.json for the check inputs and to embed "
                                       "(default: the one in the checkpoint folder)")
        q.add_argument("--rtol", type=float, default=1e-4, help="max allowed relative difference "
                                                                "max|a-b|/max|b| per output (default 1e-4)")
        q.add_argument("--fold-nonorm", action="store_true", help="fold NoNorm into adjacent linear layers first")
        q.add_argument("--fuse", action="store_true",
                       help="fastest graph: fold NoNorm, carry the residual NoNorms through the layers and merge "
                            "the linears that read one tensor (mobilebert.export.fuse)")
        if fmt == "onnx":
            q.add_argument("--opset", type=int, default=17, help="ONNX opset, 14 to 20 (default 17)")
        else:
            q.add_argument("--max-seq", type=int, default=128, help="longest sequence the program accepts "
                                                                    "(default 128)")
            q.add_argument("--max-batch", type=int, default=16, help="largest batch the program accepts "
                                                                      "(default 16; memory is planned for it)")
            q.add_argument("--int8", action="store_true", help="XNNPACK dynamic int8 linear layers "
                                                               "(checked by argmax agreement, not rtol)")
        q.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from mobilebert.checkpoint import head_for_architecture, load_config, require_heads
    from mobilebert.errors import UserError
    from mobilebert.export.onnx import export_onnx, find_vocab, load_for_export
    from mobilebert.outpaths import check_out_file

    check_out_file(args.out, "--out")
    if not args.rtol > 0:
        raise UserError(f"--rtol {args.rtol}: must be a positive number")
    if args.format == "executorch" and (args.max_seq < 3 or args.max_batch < 1):
        raise UserError(f"--max-seq {args.max_seq} / --max-batch {args.max_batch}: need a sequence of at least 3 "
                        "tokens ([CLS] x [SEP]) and a batch of at least 1")
    if Path(args.model).exists():
        # A head missing from the checkpoint would be exported freshly initialised: outputs of random weights.
        arch = args.task or (load_config(args.model).architectures or ["MobileBertModel"])[0]
        require_heads(args.model, head_for_architecture(arch), f"--task {arch}" if args.task else "model",
                      "the exported model would compute its outputs with random weights")
    model = load_for_export(args.model, task=args.task)
    vocab = find_vocab(args.model, args.vocab)
    tokenizer = None
    if vocab is not None:
        from mobilebert.tokenizer import Tokenizer, vocab_difference

        tokenizer = Tokenizer.from_file(vocab)
        own = find_vocab(args.model) if args.vocab else None
        diff = vocab_difference(tokenizer, Tokenizer.from_file(own)) if own is not None else None
        if diff:   # the file would carry a vocabulary whose ids do not match its embeddings
            raise UserError(f"--vocab {args.vocab}: not the vocabulary saved with the checkpoint ({own}: {diff}); "
                            "leave --vocab out to embed the checkpoint's own")
    else:
        print("note: no vocabulary found; checking on random token ids (pass --vocab for real text)")
    if args.format == "onnx":
        report = export_onnx(model, args.out, opset=args.opset, rtol=args.rtol, tokenizer=tokenizer,
                             vocab_path=vocab, fold_nonorm=args.fold_nonorm, fuse=args.fuse)
    else:
        from mobilebert.export.mobile import export_executorch

        report = export_executorch(model, args.out, max_seq=args.max_seq, rtol=args.rtol, tokenizer=tokenizer,
                                   vocab_path=vocab, fold_nonorm=args.fold_nonorm, int8=args.int8,
                                   max_batch=args.max_batch, fuse=args.fuse)
    for d in report.diffs:
        print(f"  {d}")
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB): matches PyTorch within rtol {args.rtol:g}")
    return 0
