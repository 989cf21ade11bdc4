"""Benchmark: which ONNX graph of MobileBERT runs fastest in ONNX Runtime, beside BERT_BASE, same run.

Variants (full-size presets, `SequenceClassification` head, random weights, batch 1, 1 thread):
  * "bsh":        the encoder on (B, S, H) tensors: each linear exports as MatMul + a separate bias Add;
  * "token":      the encoder on (B*S, H) (`mobilebert.export.wrapper.encode(token_major=True)`, the
                  default export): each linear is one Gemm with its bias (and ReLU) fused;
  * "token+fold": token-major with NoNorm folded into the linears (`mobilebert.export.fold.fold_nonorm`).
Each in fp32 and ONNX Runtime dynamic int8 (per-channel weights). The sessions are timed interleaved (one
call of each per round), so machine noise hits all alike; the ratios BERT_BASE / MobileBERT are printed
for each pairing. Usage:

    python benchmarks/onnx_graph_variants.py --seq 128 --rounds 40 --out runs/graph-variants
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch


def build(out: Path) -> dict[str, Path]:
    from mobilebert.export.onnx import export_onnx
    from mobilebert.heads import MobileBertForSequenceClassification
    from mobilebert.presets import get_config
    from mobilebert.quant.ort import quantize_onnx_dynamic
    from mobilebert.export.fold import fold_nonorm

    paths = {}
    for preset in ("mobilebert", "bert-base"):
        torch.manual_seed(0)
        model = MobileBertForSequenceClassification(get_config(preset)).eval()
        variants = [("bsh", False, False, False), ("token", True, False, False)]
        if preset == "mobilebert":
            variants.append(("token+fold", True, True, False))
        variants.append(("fused", True, True, True))
        for tag, token_major, fold, fuse in variants:
            fp32 = out / f"{preset}.{tag}.onnx"
            int8 = out / f"{preset}.{tag}.int8.onnx"
            if not fp32.is_file():
                export_onnx(fold_nonorm(model)[0] if fold else model, fp32, token_major=token_major, fuse=fuse)
            if not int8.is_file():
                quantize_onnx_dynamic(fp32, int8, per_channel=True)
            paths[f"{preset} {tag} fp32"], paths[f"{preset} {tag} int8"] = fp32, int8
    return paths


def main() -> None:
    import onnxruntime as ort

    from mobilebert.recipes.bench import time_interleaved

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--out", default="runs/graph-variants")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = build(out)
    ids = np.random.default_rng(0).integers(1000, 30000, (1, args.seq))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    sessions = {}
    for name, path in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        sessions[name] = (lambda s: lambda: s.run(None, feeds))(session)
    load = os.getloadavg()[0]
    p50 = time_interleaved(sessions, args.rounds)
    ratios = {f"{prec} bert-base {b} / mobilebert {m}": p50[f"bert-base {b} {prec}"] / p50[f"mobilebert {m} {prec}"]
              for prec in ("fp32", "int8") for m in ("bsh", "token", "token+fold", "fused") for b in ("bsh", "token", "fused")}
    for k, v in p50.items():
        print(f"{k:28s} p50 {v:8.2f} ms")
    for k, v in ratios.items():
        print(f"{k:45s} {v:5.2f}x")
    result = {"seq": args.seq, "rounds": args.rounds, "threads": 1, "load_average": [load, os.getloadavg()[0]],
              "p50_ms": p50, "ratios": ratios, "torch": torch.__version__, "onnxruntime": ort.__version__}
    (out / f"results-{args.seq}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
