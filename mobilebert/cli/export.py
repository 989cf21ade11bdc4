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
            q.add_argument("--max-seq", type=int, help="longest sequence the program accepts (default 128, or "
                                                       "the model's max_position_embeddings where smaller)")
            q.add_argument("--max-batch", type=int, default=16, help="largest batch the program accepts "
                                                                      "(default 16; memory is planned for it)")
            q.add_argument("--int8", action="store_true", help="XNNPACK dynamic int8 linear layers "
                                                               "(checked by argmax agreement, not rtol)")
        q.set_defaults(func=_run)


def _run(args) -> int:
    from mobilebert.export.from_checkpoint import export_checkpoint

    own = {k: getattr(args, k) for k in ("opset", "max_seq", "max_batch", "int8") if hasattr(args, k)}  # per format
    return export_checkpoint(args.model, args.out, args.format, task=args.task, vocab=args.vocab, rtol=args.rtol,
                             fold_nonorm=args.fold_nonorm, fuse=args.fuse, **own)
