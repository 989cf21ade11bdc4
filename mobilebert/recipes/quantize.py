"""The `mobilebert quantize` pipeline: checkpoint -> int8 model, with fp32 vs int8 dev accuracy side by side.

Paper §3.3 / Table 6 (8-bit post-training quantization, <= 0.5 point drop) and §5 (TFLite
`--use_post_quantization`, with `--activation_quantization` calibrating on ~100 training examples).
Steps: load the fine-tuned classifier; check that the task data belong to it; score the fp32 model
on the dev set; export fp32 ONNX (parity-checked); quantize (ONNX Runtime dynamic, or static QDQ
calibrated on a seeded sample of the *training* file, or PyTorch dynamic in memory); score the int8
model on the same dev examples; refuse when the drop passes `max_drop` points (or warn, by choice).
The int8 file is only moved to `out` once it has passed.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mobilebert import atomic
from mobilebert.errors import UserError
from mobilebert.quant.evaluate import (QuantReport, check_task, compare, gate, load_split, run_logits,
                                       session_logits_fn, torch_logits_fn)

METHODS = ("ort-dynamic", "ort-static", "torch-dynamic")


@dataclass
class QuantizeResult:
    report: QuantReport
    method: str
    out: Path | None
    warning: str | None
    fp32_size: int | None = None  # bytes of the fp32 ONNX file
    int8_size: int | None = None
    reduce_range: bool = False  # ONNX Runtime's 7-bit weights
    weight_type: str = "s8"


def quantize_checkpoint(model_dir, task: str, data, out=None, method: str = "ort-dynamic",
                        calibration=None, calib_samples: int = 128, calibration_method: str = "minmax",
                        eval_file=None, eval_samples: int = 0, max_drop: float = 1.0, warn_only: bool = False,
                        per_channel: bool = True, reduce_range: bool = False, weight_type: str = "s8",
                        fold_nonorm: bool = False, fuse: bool = False, embeddings: bool = False,
                        max_seq_length: int | None = None, batch_size: int = 32, vocab=None, seed: int = 0,
                        log=print) -> QuantizeResult:
    from mobilebert.export.onnx import export_onnx, find_vocab, load_for_export
    from mobilebert.outpaths import check_out_file
    from mobilebert.tokenizer import Tokenizer

    if method not in METHODS:
        raise UserError(f"--method {method}: choose one of {', '.join(METHODS)}")
    if fuse and method == "torch-dynamic":
        raise UserError("--fuse builds the fused ONNX graph: use it with --method ort-dynamic or ort-static")
    if reduce_range and method == "torch-dynamic":
        raise UserError("--reduce-range sets ONNX Runtime's 7-bit weights: use it with --method ort-dynamic or "
                        "ort-static")
    if weight_type != "s8" and method != "ort-dynamic":
        raise UserError(f"--weight-type {weight_type}: only --method ort-dynamic takes uint8 weights")
    if method != "torch-dynamic":
        if out is None:
            raise UserError(f"--out is required for --method {method} (the int8 .onnx file to write)")
        out = Path(out)
        if out.suffix != ".onnx":
            raise UserError(f"--out {out}: the file name must end in .onnx")
        check_out_file(out, "--out")   # a folder in the way fails now, not after scoring both models
    from mobilebert.checkpoint import require_heads

    model = load_for_export(model_dir)
    if type(model).__name__ != "MobileBertForSequenceClassification":
        raise UserError(f"{model_dir}: quantize scores sentence(-pair) classifiers; this checkpoint is a "
                        f"{type(model).__name__} (export it with `mobilebert export onnx` instead)")
    require_heads(model_dir, {"classifier"}, "model", "the int8 model's accuracy would be that of a random head")
    vocab_path = find_vocab(model_dir, vocab)
    if vocab_path is None:
        raise UserError(f"{model_dir}: no vocab.txt or tokenizer.json in the checkpoint folder; pass --vocab")
    tokenizer = Tokenizer.from_file(vocab_path)
    from mobilebert.tasks.glue import get_task

    check_task(model_dir, model.config, get_task(task))  # before reading: a wrong task fails with its name
    positions = model.config.max_position_embeddings
    if max_seq_length is None:  # 128, or fewer where the model has fewer positions
        max_seq_length = min(128, positions)
    elif not 2 <= max_seq_length <= positions:
        raise UserError(f"--max-seq-length {max_seq_length}: must be from 2 to the model's max_position_embeddings="
                        f"{positions}")
    if data is None and eval_file is None:
        raise UserError("give --data (a GLUE folder) or --eval-file (the task's labeled dev file)")
    dev = load_split(task, eval_file or data, "dev", tokenizer, max_seq_length, limit=eval_samples)
    if data is None and calibration is None and method == "ort-static":
        raise UserError("--method ort-static needs calibration data: give --data (the task's train file) "
                        "or --calibration FILE")
    log(f"scoring fp32 on {dev.path} ({len(dev)} examples)")
    fp32_logits = run_logits(torch_logits_fn(model), dev, batch_size)

    if method == "torch-dynamic":
        from mobilebert.quant.pytorch import quantize_torch_dynamic

        qmodel = quantize_torch_dynamic(model)
        report = compare(dev, fp32_logits, run_logits(torch_logits_fn(qmodel), dev, batch_size))
        return QuantizeResult(report, method, None, gate(report, max_drop, warn_only, "PyTorch dynamic int8"))

    from mobilebert.export.runtime import load_session
    from mobilebert.quant.ort import (int8_kernels_may_saturate, quantize_onnx_dynamic, quantize_onnx_static,
                                      saturation_hint)

    work = Path(tempfile.mkdtemp(prefix="mobilebert-quantize-"))
    try:
        fp32_path, int8_path = work / "model.onnx", work / "model.int8.onnx"
        parity = export_onnx(model, fp32_path, tokenizer=tokenizer, vocab_path=vocab_path, fold_nonorm=fold_nonorm,
                             fuse=fuse)
        log(f"fp32 ONNX matches PyTorch: {parity}")
        if method == "ort-dynamic":
            quantize_onnx_dynamic(fp32_path, int8_path, per_channel=per_channel, reduce_range=reduce_range,
                                  embeddings=embeddings, weight_type=weight_type)
        else:
            calib = load_split(task, calibration or data, "train", tokenizer, max_seq_length, limit=calib_samples,
                               seed=seed)
            log(f"calibrating on {len(calib)} examples of {calib.path} ({calibration_method})")
            quantize_onnx_static(fp32_path, int8_path, list(calib.batches(8)), method=calibration_method,
                                 per_channel=per_channel, reduce_range=reduce_range)
        saturable = not reduce_range and weight_type == "s8"  # the u8 x s8 kernel at 8 bits
        if saturable and int8_kernels_may_saturate():
            log("note: this x86 CPU has no VNNI, so ONNX Runtime's u8 x s8 int8 sums can saturate here (not on VNNI "
                "CPUs or ARM); --reduce-range avoids it at the same speed (docs/int8-kernels.md)")
        session = load_session(int8_path)
        report = compare(dev, fp32_logits, run_logits(session_logits_fn(session), dev, batch_size))
        warning = gate(report, max_drop, warn_only, f"{method} int8 model",
                       hint=saturation_hint(method == "ort-dynamic") if saturable else "")
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(out) as staged:
            shutil.copyfile(int8_path, staged)
        return QuantizeResult(report, method, out, warning, fp32_path.stat().st_size, out.stat().st_size,
                              reduce_range, weight_type)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def quantize(model_dir, task: str, data, json_path=None, **options) -> int:
    """The `mobilebert quantize` job: `quantize_checkpoint(model_dir, task, data, **options)`, then the fp32 and
    int8 scores side by side, the sizes, the file written and (`json_path`) the report as JSON; exit status 0."""
    import json
    import sys

    result = quantize_checkpoint(model_dir, task, data, **options)
    r = result.report
    print(r.table(result.method + (" reduce-range" if result.reduce_range else "")
                  + (f" {result.weight_type} weights" if result.weight_type != "s8" else "")))
    if result.fp32_size:
        print(f"size: fp32 ONNX {result.fp32_size / 2**20:.1f} MiB, int8 {result.int8_size / 2**20:.1f} MiB "
              f"({result.fp32_size / result.int8_size:.2f}x smaller)")
    if result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
    if result.out:
        print(f"wrote {result.out}")
    if json_path:
        atomic.write_text(json_path, json.dumps({
            "task": r.task, "metric": r.metric, "examples": r.n, "fp32": r.fp32, "int8": r.int8, "drop_points": r.drop,
            "agreement": r.agreement, "mean_abs_diff": r.mean_abs_diff, "largest_fp32": r.largest,
            "method": result.method, "reduce_range": result.reduce_range,
            "weight_type": result.weight_type, "out": str(result.out) if result.out else None,
            "warning": result.warning, "fp32_bytes": result.fp32_size, "int8_bytes": result.int8_size}, indent=2) + "\n")
    return 0
