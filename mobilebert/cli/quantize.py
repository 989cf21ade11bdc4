"""`mobilebert quantize`: int8 post-training quantization with fp32 and int8 dev accuracy side by side.

    mobilebert quantize MODEL_DIR --task SST-2 --data GLUE_DIR --out model.int8.onnx
        [--method ort-dynamic|ort-static|torch-dynamic] [--calib-samples 128] [--max-drop 1.0] [--warn-only]
        [--weight-type s8|u8] [--reduce-range]

Paper §3.3 Table 6. The command refuses (exit 2, no file written) when int8 loses more than
--max-drop points of the task's metric on the dev set, unless --warn-only is given. Classification tasks are
scored by argmax (with the agreement of the two models), regression tasks (STS-B) on their scores; both report
the mean difference between the fp32 and int8 outputs.
"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="int8 quantization, gated on fp32-vs-int8 dev accuracy",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="fine-tuned sequence-classification checkpoint folder")
    p.add_argument("--task", required=True, help="GLUE task the model was fine-tuned on (e.g. SST-2)")
    p.add_argument("--data", help="GLUE root or task folder (dev set; train set for calibration)")
    p.add_argument("--out", help="int8 .onnx file to write (ort-* methods)")
    p.add_argument("--method", default="ort-dynamic", choices=["ort-dynamic", "ort-static", "torch-dynamic"],
                   help="ONNX Runtime dynamic (default) or static QDQ, or PyTorch dynamic (scored only)")
    p.add_argument("--calibration", help="static: file to calibrate on (default: the task's train file)")
    p.add_argument("--calib-samples", type=int, default=128, help="static: calibration examples (default 128)")
    p.add_argument("--calibration-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--eval-file", help="labeled dev file (default: the task's dev file under --data)")
    p.add_argument("--eval-samples", type=int, default=0, help="score only the first N dev examples (0: all)")
    p.add_argument("--max-drop", type=float, default=1.0, help="largest allowed drop in points (default 1.0)")
    p.add_argument("--warn-only", action="store_true", help="keep the int8 model and warn when the drop is larger")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per matrix instead of one per "
                                                             "output channel (the default; more accurate)")
    p.add_argument("--reduce-range", action="store_true",
                   help="ort-*: 7-bit weights, so that x86 CPUs without VNNI (AVX2 only) cannot saturate their "
                        "int16 sums; same speed (docs/int8-kernels.md)")
    p.add_argument("--weight-type", default="s8", choices=["s8", "u8"],
                   help="ort-dynamic: int8 (default) or uint8 weights; u8 avoids the saturation of x86 CPUs "
                        "without VNNI and keeps 8 bits (benchmarks/int8_kernels.py)")
    p.add_argument("--fold-nonorm", action="store_true", help="fold NoNorm into adjacent linear layers first")
    p.add_argument("--fuse", action="store_true", help="export the fused graph first (export onnx --fuse)")
    p.add_argument("--quantize-embeddings", action="store_true", help="ort-dynamic: int8 word embeddings too")
    p.add_argument("--max-seq-length", type=int, help="tokens per example (default 128, or the model's "
                                                          "max_position_embeddings where smaller)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--vocab", help="vocabulary (default: the one in the checkpoint folder)")
    p.add_argument("--json", help="also write the report here as JSON")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from mobilebert.recipes.quantize import quantize

    return quantize(
        args.model, args.task, args.data, json_path=args.json, out=args.out, method=args.method,
        calibration=args.calibration, calib_samples=args.calib_samples, calibration_method=args.calibration_method,
        eval_file=args.eval_file, eval_samples=args.eval_samples, max_drop=args.max_drop, warn_only=args.warn_only,
        per_channel=not args.per_tensor, reduce_range=args.reduce_range, weight_type=args.weight_type,
        fold_nonorm=args.fold_nonorm, fuse=args.fuse,
        embeddings=args.quantize_embeddings, max_seq_length=args.max_seq_length, batch_size=args.batch_size,
        vocab=args.vocab)
