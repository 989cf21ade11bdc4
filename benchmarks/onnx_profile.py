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


def main() -> None:
    import onnx
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    graph = onnx.load(args.model, load_external_data=False).graph
    weights = {i.name: list(i.dims) for i in graph.initializer}
    ids = np.random.default_rng(0).integers(1000, 30000, (1, args.seq))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.enable_profiling = True
        so.log_severity_level = 3  # no warning about saving the hardware-specific optimized graph
        so.profile_file_prefix = os.path.join(tmp, "profile")
        # ORT_ENABLE_ALL fuses nodes: keep the optimized graph to read each fused node's weight shape.
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        session = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
        for _ in range(5):
            session.run(None, feeds)
        for _ in range(args.runs):
            session.run(None, feeds)
        events = json.load(open(session.end_profiling()))
        opt = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
        weights.update({i.name: list(i.dims) for i in opt.initializer})
        node_weight = {n.name: weights.get(n.input[1]) for n in opt.node if len(n.input) > 1}
    calls = args.runs + 5
    per_op, count = collections.Counter(), collections.Counter()
    gemm_us, gemm_flop = 0.0, 0.0
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
            gemm_flop += 2.0 * args.seq * w[0] * w[1]
            shape_us[tuple(sorted(w))] += e["dur"]
            shape_n[tuple(sorted(w))] += 1
    total = sum(per_op.values())
    print(f"{args.model}: {total / calls / 1e3:.2f} ms of kernel time per call in {sum(count.values()) // calls} "
          f"kernels (seq {args.seq}, 1 thread)")
    for op, us in per_op.most_common(12):
        print(f"  {op:24s} {100 * us / total:5.1f}%  {us / calls / 1e3:7.2f} ms  {count[op] // calls:4d} nodes")
    if gemm_us:
        print(f"  weight GEMMs: {gemm_us / calls / 1e3:.2f} ms, {gemm_flop / gemm_us / 1e3:.1f} GFLOP/s")
        for shape, us in shape_us.most_common(6):  # the rate per weight shape (the GEMM's K x N)
            flop = 2.0 * args.seq * shape[0] * shape[1] * shape_n[shape]
            print(f"    {shape[0]:5d} x {shape[1]:5d}: {shape_n[shape] // calls:4d} per call, "
                  f"{us / calls / 1e3:6.2f} ms, {flop / us / 1e3:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
