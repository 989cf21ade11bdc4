"""Benchmark: where an exported model's time goes in ONNX Runtime, per op type, and the GEMMs' GFLOP/s.

Runs ONNX Runtime's profiler on one .onnx file (batch 1, 1 thread, random token ids), sums kernel time per op
type over the timed calls, and for the weight GEMMs (`GEMM_OPS` with a 2-D constant weight, fp32 or int8)
computes the FLOP rate from the shapes, in all and per weight shape. Use it on the files `benchmarks/onnx_graph_variants.py` writes:

    python benchmarks/onnx_profile.py runs/graph-variants/mobilebert.token+fold.onnx --seq 128
    python benchmarks/onnx_profile.py runs/graph-variants/bert-base.token.onnx --seq 128
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np

# Ops that multiply an activation by a 2-D weight: fp32 (Gemm / FusedGemm / MatMul) and ONNX Runtime's
# dynamic int8 kernels (the weight is their second input in both).
GEMM_OPS = ("Gemm", "FusedGemm", "MatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def profile(model: str, seq: int = 128, runs: int = 20) -> dict:
    """Kernel time per call of one .onnx file (batch 1, 1 thread): {"total_ms", "kernels", "per_op": {op: (ms,
    nodes)}, "gemm_ms", "gemm_gflops", "per_shape": {(K, N): (calls, ms, GFLOP/s)}, "attention_ms"}; attention is
    the GEMMs without a 2-D weight (scores and context) and Softmax, what grows with heads x seq^2."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(model, load_external_data=False).graph
    weights = {i.name: list(i.dims) for i in graph.initializer}
    ids = np.random.default_rng(0).integers(1000, 30000, (1, seq))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.enable_profiling = True
        so.log_severity_level = 3  # no warning about saving the hardware-specific optimized graph
        so.profile_file_prefix = os.path.join(tmp, "profile")
        # ORT_ENABLE_ALL fuses nodes: keep the optimized graph to read each fused node's weight shape.
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        for _ in range(5):
            session.run(None, feeds)
        for _ in range(runs):
            session.run(None, feeds)
        events = json.load(open(session.end_profiling()))
        opt = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
        weights.update({i.name: list(i.dims) for i in opt.initializer})
        node_weight = {n.name: weights.get(n.input[1]) for n in opt.node if len(n.input) > 1}
    calls = runs + 5
    per_op, count = collections.Counter(), collections.Counter()
    gemm_us, gemm_flop, attention_us = 0.0, 0.0, 0.0
    shape_us, shape_n = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op, node = e["args"]["op_name"], e["name"][: -len("_kernel_time")]
        per_op[op] += e["dur"]
        count[op] += 1
        w = node_weight.get(node)
        if op in GEMM_OPS and w is not None and len(w) == 2:
            gemm_us += e["dur"]
            gemm_flop += 2.0 * seq * w[0] * w[1]
            shape_us[tuple(sorted(w))] += e["dur"]
            shape_n[tuple(sorted(w))] += 1
        elif op in GEMM_OPS or op in ("FusedMatMul", "Softmax"):
            attention_us += e["dur"]
    ms = lambda us: us / calls / 1e3
    return {"total_ms": ms(sum(per_op.values())), "kernels": sum(count.values()) // calls,
            "per_op": {op: (ms(us), count[op] // calls) for op, us in per_op.most_common()},
            "gemm_ms": ms(gemm_us), "gemm_gflops": gemm_flop / gemm_us / 1e3 if gemm_us else 0.0,
            "attention_ms": ms(attention_us),
            "per_shape": {shape: (shape_n[shape] // calls, ms(us),
                                  2.0 * seq * shape[0] * shape[1] * shape_n[shape] / us / 1e3)
                          for shape, us in shape_us.most_common()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    p = profile(args.model, args.seq, args.runs)
    print(f"{args.model}: {p['total_ms']:.2f} ms of kernel time per call in {p['kernels']} kernels "
          f"(seq {args.seq}, 1 thread)")
    for op, (ms, nodes) in list(p["per_op"].items())[:12]:
        print(f"  {op:24s} {100 * ms / p['total_ms']:5.1f}%  {ms:7.2f} ms  {nodes:4d} nodes")
    if p["gemm_ms"]:
        print(f"  weight GEMMs: {p['gemm_ms']:.2f} ms, {p['gemm_gflops']:.1f} GFLOP/s")
        for shape, (n, ms, rate) in list(p["per_shape"].items())[:6]:  # the rate per weight shape (K x N)
            print(f"    {shape[0]:5d} x {shape[1]:5d}: {n:4d} per call, {ms:6.2f} ms, {rate:6.1f} GFLOP/s")
    print(f"  attention (scores, softmax, context): {p['attention_ms']:.2f} ms")


if __name__ == "__main__":
    main()
