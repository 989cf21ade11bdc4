"""int8 post-training quantization of exported ONNX models with ONNX Runtime: dynamic and static (QDQ).

Paper §3.3 / Table 6 and §5: MobileBERT ships as an 8-bit model made by TFLite *post-training*
quantization ("nearly no degradation"): `Optimize.DEFAULT` is dynamic-range int8 (weights int8,
activations quantized on the fly) and `--activation_quantization` adds a representative dataset of
~100 training examples for full-integer (static) quantization. The two ONNX Runtime equivalents:

- `quantize_onnx_dynamic`: int8 weights, activations quantized per call (MatMulInteger); no data needed;
- `quantize_onnx_static`: QDQ nodes whose activation ranges are calibrated on a sample of the task's data.

Only weight matmuls are quantized by default. The attention matmuls (activation x activation) and the
additive attention mask stay in float: the mask holds the dtype's minimum, and a calibrated range that
includes it would leave no resolution for the scores (one cause of int8 collapses such as
tensorflow#44306, 90% -> 49%). The word-embedding Gather can be quantized too (`embeddings=True`), for
the paper's ~4x smaller file. The model's metadata (config, vocabulary) is carried to the int8 file.
"""

from __future__ import annotations

import functools
import logging
import platform
import tempfile
from pathlib import Path

import numpy as np

from mobilebert import atomic
from mobilebert.errors import UserError
from mobilebert.export.onnx import atomic_output, set_metadata

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@functools.cache
def int8_kernels_may_saturate(cpuinfo: str = "/proc/cpuinfo", machine: str | None = None) -> bool:
    """True on an x86 CPU without VNNI (AVX2 or AVX-512 alone), read from `cpuinfo` (False where unreadable).

    There ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW, which adds each pair of products
    in int16 and saturates at 32767, so large activations against large weights lose their tails (its quantization
    docs: "data type selection", which name x86 with AVX2/AVX-512 only; VNNI's VPDPBUSD sums in int32). Remedies:
    7-bit weights (`reduce_range`) or uint8 weights (the u8 x u8 kernel, which the docs say does not saturate)."""
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx2" in flags and "vnni" not in flags


def saturation_hint(dynamic: bool = True) -> str:
    """The remedy to name when an int8 model scored on this CPU lost too much ("" where the kernels cannot
    saturate). `dynamic`: the model was quantized dynamically, where uint8 weights are a choice too."""
    if not int8_kernels_may_saturate():
        return ""
    return ("; this x86 CPU has no VNNI, where ONNX Runtime's u8 x s8 int8 sums can saturate: try "
            + ("--weight-type u8 or " if dynamic else "") + "--reduce-range, or score on the CPU you deploy to")


def _metadata(path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _constants(graph) -> tuple[set[str], dict[str, str]]:
    """(every constant tensor name, {Identity alias: the initializer or Constant it repeats}).

    Constants are initializers, Constant nodes' outputs, and the Identity aliases the exporter writes for
    repeated initializers (e.g. two layers' equal biases)."""
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    alias = {}
    for n in graph.node:
        if n.op_type == "Identity" and n.input[0] in consts:
            consts.add(n.output[0])
            alias[n.output[0]] = alias.get(n.input[0], n.input[0])
    return consts, alias


def weight_matmuls(path) -> tuple[list[str], list[str]]:
    """(names of MatMul/Gemm nodes with a constant weight, names of activation x activation MatMuls)."""
    import onnx

    model = onnx.load(str(path))
    consts, _ = _constants(model.graph)
    weights, acts = [], []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            (weights if any(i in consts for i in node.input[:2]) else acts).append(node.name)
    return weights, acts


def gemms_to_matmuls(src, dst, residual_only: bool = False) -> int:
    """Rewrite every Gemm with a constant weight as MatMul + Add (same numbers); returns how many.

    residual_only: only those whose C input is an activation (the fused graph's residual Gemms), not a
    constant bias.

    Our export writes the encoder's linears as bias-fused Gemms (2-D token-major layout, the fastest fp32
    graph), but ONNX Runtime's dynamic quantizer only knows MatMul; it then fuses the Add back into
    DynamicQuantizeMatMul / MatMulIntegerToFloat as their bias input."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    consts, alias = _constants(model.graph)
    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias_c = len(node.input) < 3 or not node.input[2] or node.input[2] in consts
        weight = alias.get(node.input[1], node.input[1])
        if (weight not in inits or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0 or (residual_only and bias_c)):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[weight])
        if attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)
        w_name = f"{weight}_kn_{count}"
        model.graph.initializer.append(numpy_helper.from_array(w, w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
        count += 1
    # Drop weights that only the rewritten Gemms used (the transposed copies replace them), and aliases of them.
    read = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
    nodes = [n for n in nodes if n.op_type != "Identity" or n.output[0] in read]
    used = {i for n in nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return count


def _quiet():
    # ORT's quantizer logs a pre-processing suggestion per call on the root logger.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


def _finish(src: Path, tmp: Path, out: Path, cleanup) -> Path:
    set_metadata(tmp, {**_metadata(src), "mobilebert.quantized": "int8"})
    atomic.commit(tmp, out)
    cleanup()
    return out


WEIGHT_TYPES = ("s8", "u8")


def quantize_onnx_dynamic(src, out, per_channel: bool = False, reduce_range: bool = False,
                          embeddings: bool = False, weight_type: str = "s8") -> Path:
    """Dynamic int8: weights int8 (symmetric; `weight_type="u8"`: uint8 with a zero point), activations uint8 per
    call. Returns `out`.

    reduce_range: 7-bit weights. On x86 without VNNI (`int8_kernels_may_saturate`) both avoid the u8 x s8 kernel's
    int16 saturation, in different ways: 7-bit weights keep the pair sums below 2^15, u8 weights take ONNX
    Runtime's u8 x u8 kernel, which does not saturate (measured: benchmarks/int8_kernels.py)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise UserError(f"{src}: ONNX model not found")
    if weight_type not in WEIGHT_TYPES:
        raise UserError(f"weight type {weight_type!r}: choose one of {', '.join(WEIGHT_TYPES)}")
    _quiet()
    ops = ["MatMul"] + (["Gather"] if embeddings else [])
    tmp, cleanup = atomic_output(out)
    try:
        with tempfile.TemporaryDirectory(dir=out.parent) as work:
            plain = Path(work) / "matmuls.onnx"
            gemms_to_matmuls(src, plain)
            weights, _ = weight_matmuls(plain)
            qtype = QuantType.QInt8 if weight_type == "s8" else QuantType.QUInt8
            quantize_dynamic(str(plain), str(tmp), weight_type=qtype, per_channel=per_channel,
                             reduce_range=reduce_range, op_types_to_quantize=ops,
                             nodes_to_quantize=None if embeddings else weights,
                             extra_options={"MatMulConstBOnly": True})
        return _finish(src, tmp, out, cleanup)
    except BaseException:
        cleanup()
        raise


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.feeds)


def quantize_onnx_static(src, out, calibration: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                         method: str = "minmax", per_channel: bool = True, reduce_range: bool = False) -> Path:
    """Static int8 in QDQ format: activation ranges from `calibration` batches of (ids, mask, types).

    Only the weight matmuls' inputs get QuantizeLinear/DequantizeLinear pairs; see the module docstring."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise UserError(f"{src}: ONNX model not found")
    if method not in CALIBRATION_METHODS:
        raise UserError(f"--calibration-method {method}: choose one of {', '.join(CALIBRATION_METHODS)}")
    if not calibration:
        raise UserError("static quantization needs at least one calibration batch (--calib-samples)")
    _quiet()
    names = ("input_ids", "attention_mask", "token_type_ids")
    feeds = [dict(zip(names, (np.asarray(t, dtype=np.int64) for t in batch))) for batch in calibration]
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    tmp, cleanup = atomic_output(out)
    try:
        with tempfile.TemporaryDirectory(dir=out.parent) as work:
            # ONNX Runtime runs a QDQ Gemm with a bias as an int8 kernel, but one whose C is the residual (the
            # fused graph, mobilebert.export.fuse) in float, at the fp32 speed; as MatMul + Add it is int8
            # (benchmarks/fused_paths.py). The bias Gemms stay Gemms: as MatMul + Add they lost more accuracy
            # (MiniLM MRPC F1 drop 4.27 against 2.93 points, benchmarks/deploy_int8_accuracy.py).
            plain = Path(work) / "matmuls.onnx"
            gemms_to_matmuls(src, plain, residual_only=True)
            weights, _ = weight_matmuls(plain)
            quantize_static(str(plain), str(tmp), _Reader(feeds), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            reduce_range=reduce_range, op_types_to_quantize=["MatMul", "Gemm"],
                            nodes_to_quantize=weights, calibrate_method=calib,
                            extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False,
                                           "WeightSymmetric": True})
        return _finish(src, tmp, out, cleanup)
    except BaseException:
        cleanup()
        raise
