"""Benchmark: the fused inference layers (`mobilebert.export.fuse`) outside ONNX Runtime fp32/dynamic int8.

Two comparisons, each timed interleaved (one call of each per round, batch 1, 1 thread, full-size presets,
`SequenceClassification` head, random weights):

* PyTorch eager: the NoNorm-folded model (`fold_nonorm`, (B, S, H) and token-major) against the fused model,
  for MobileBERT and BERT_BASE;
* ONNX Runtime static QDQ int8 of the fused MobileBERT graph (`quantize_onnx_static`, which rewrites the
  residual Gemms as MatMul + Add) against dynamic int8 and fp32 of the same graph, and against static int8 of
  the folded graph.

    python benchmarks/fused_paths.py --seq 128 --rounds 15 --out runs/fused-paths
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    import onnxruntime as ort

    from mobilebert import get_config
    from mobilebert.recipes.bench import time_interleaved as interleaved
    from mobilebert.export.fuse import fuse_for_inference
    from mobilebert.export.onnx import export_onnx
    from mobilebert.export.wrapper import ExportWrapper
    from mobilebert.heads import MobileBertForSequenceClassification
    from mobilebert.quant.ort import quantize_onnx_dynamic, quantize_onnx_static
    from mobilebert.export.fold import fold_nonorm

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default="runs/fused-paths")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(999, 30000, (1, args.seq), generator=gen)
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    load = [os.getloadavg()[0]]

    eager, models = {}, {}
    for preset in ("mobilebert", "bert-base"):
        torch.manual_seed(0)
        models[preset] = m = MobileBertForSequenceClassification(get_config(preset)).eval()
        for tag, wrapper in (("folded", ExportWrapper(fold_nonorm(m)[0])),
                             ("folded token-major", ExportWrapper(fold_nonorm(m)[0], token_major=True)),
                             ("fused", ExportWrapper(fuse_for_inference(m), token_major=True))):
            eager[f"{preset} {tag}"] = (lambda w: lambda: w(ids, mask, types))(wrapper)
    with torch.inference_mode():
        eager_ms = interleaved(eager, args.rounds)

    rng = np.random.default_rng(0)
    calib = [(x, np.ones_like(x), np.zeros_like(x)) for x in (rng.integers(1000, 30000, (2, args.seq))
                                                                for _ in range(4))]
    paths = {}
    for tag, kw in (("folded", {"fold_nonorm": True}), ("fused", {"fuse": True})):
        fp32 = out / f"mobilebert.{tag}.onnx"
        if not fp32.is_file():
            export_onnx(models["mobilebert"], fp32, **kw)
        static = out / f"mobilebert.{tag}.static.onnx"
        if not static.is_file():
            quantize_onnx_static(fp32, static, calib)
        paths[f"{tag} static int8"] = static
        if tag == "fused":
            dynamic = out / "mobilebert.fused.int8.onnx"
            if not dynamic.is_file():
                quantize_onnx_dynamic(fp32, dynamic, per_channel=True)
            paths.update({"fused fp32": fp32, "fused dynamic int8": dynamic})
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    sessions = {}
    for k, p in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sessions[k] = (lambda s: lambda: s.run(None, feeds))(ort.InferenceSession(str(p), so,
                                                                                   providers=["CPUExecutionProvider"]))
    ort_ms = interleaved(sessions, args.rounds)
    load.append(os.getloadavg()[0])

    for k, v in {**eager_ms, **{f"mobilebert ORT {k}": v for k, v in ort_ms.items()}}.items():
        print(f"{k:40s} p50 {v:8.2f} ms")
    ratios = {tag: eager_ms[f"bert-base {tag}"] / eager_ms[f"mobilebert {tag}"]
              for tag in ("folded", "folded token-major", "fused")}
    for k, v in ratios.items():
        print(f"eager BERT_BASE / MobileBERT, {k:20s} {v:5.2f}x")
    result = {"seq": args.seq, "rounds": args.rounds, "threads": 1, "load_average": load, "eager_p50_ms": eager_ms,
              "eager_ratios": ratios, "ort_p50_ms": ort_ms, "torch": torch.__version__, "onnxruntime": ort.__version__}
    (out / f"results-{args.seq}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
