"""Benchmark: a siamese (bi-encoder) classifier's ONNX graph with its sentence rows trimmed in the graph, against
rows kept at the input's length, on real MRPC dev pairs.

The exported siamese graph splits each pair row into its two sentence rows. Until 2026-12-06 those rows kept the
input's length S (a traced graph cannot read a length from the data with `int()`); now `wrapper.trim_rows` cuts
them to the longer sentence with NonZero + Gather. This script exports the study's 4-head student shaped from
all-MiniLM-L6-v2 (`kt_latency.configs`, random weights: latency does not depend on them) both ways, fused and
int8 as `mobilebert bench` builds them, and times one call per pair (batch 1, 1 thread), the two graphs called in
turn for each pair, in two serving modes: each pair at its own length, and each padded to the model's length
(fixed-shape serving). Reports p50 per graph and the ratio.

    python benchmarks/siamese_trim.py --out docs/siamese-trim      # ~3 min on an idle 2-core machine
    python benchmarks/siamese_trim.py --smoke --out DIR/x          # seconds: the debug preset, 8 pairs

Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout
sys.path.insert(0, str(REPO / "benchmarks"))

from kt_study_rows import VOCAB, data_root  # noqa: E402  (beside this file)


def mrpc_pairs(glue: Path, tokenizer, n: int, seq: int) -> list[tuple[np.ndarray, ...]]:
    """The first n MRPC dev pairs as (1, length) rows, truncated to seq."""
    lines = (glue / "MRPC" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:n + 1]
    rows = [line.split("\t") for line in lines]
    out = []
    for r in rows:
        enc = tokenizer([r[3]], [r[4]], max_length=seq)
        out.append(tuple(enc[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")))
    return out


def pad(row: tuple[np.ndarray, ...], seq: int) -> tuple[np.ndarray, ...]:
    return tuple(np.pad(t, ((0, 0), (0, seq - t.shape[1]))) for t in row)


def time_pairs(sessions: dict, pairs: list, rounds: int) -> dict[str, float]:
    """p50 ms per session, one call each per pair in turn, `rounds` passes over the pairs (after one warm-up)."""
    times = {k: [] for k in sessions}
    for r in range(rounds + 1):
        for row in pairs:
            for name, session in sessions.items():
                t0 = time.perf_counter()
                session(*row)
                if r:
                    times[name].append((time.perf_counter() - t0) * 1000)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--glue", default=str(data_root() / "glue"))
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="passes over the pairs")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default="runs/siamese-trim", help="writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    import torch

    from kt_latency import configs
    from mobilebert.export.onnx import export_onnx
    from mobilebert.export.runtime import load_session
    from mobilebert.heads import MobileBertForSequenceClassification
    from mobilebert.quant.ort import quantize_onnx_dynamic
    from mobilebert.recipes.bench import machine_info
    from mobilebert.tokenizer import Tokenizer

    torch.set_num_threads(1)
    cfg = configs(args.smoke, heads=(4,), pooling="siamese")["student-h4"]
    n, rounds = (8, 1) if args.smoke else (args.pairs, args.rounds)
    torch.manual_seed(0)
    model = MobileBertForSequenceClassification(cfg).eval()
    seq = min(128, cfg.max_position_embeddings)
    tokenizer = Tokenizer.from_file(VOCAB())
    pairs = mrpc_pairs(Path(args.glue), tokenizer, n, seq)
    res = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python benchmarks/siamese_trim.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine_info(), "model": "student-h4 (smoke: debug-mobilebert)" if args.smoke else "student-h4",
           "pairs": n, "rounds": rounds, "seq": seq, "mean_pair_tokens": float(np.mean([p[0].shape[1] for p in pairs])),
           "results": {}}
    with tempfile.TemporaryDirectory() as work:
        sessions = {}
        for trim in (False, True):
            fp32 = Path(work) / f"trim{trim}.onnx"
            export_onnx(model, fp32, tokenizer=tokenizer, fuse=True, trim_rows=trim)
            int8 = quantize_onnx_dynamic(fp32, Path(work) / f"trim{trim}.int8.onnx")
            for runtime, path in (("ort-fp32", fp32), ("ort-int8", int8)):
                sessions[(runtime, trim)] = load_session(path, threads=1)
        for runtime in ("ort-fp32", "ort-int8"):
            pair = {"untrimmed": sessions[(runtime, False)], "trimmed": sessions[(runtime, True)]}
            for mode, rows in (("own length", pairs), (f"padded to {seq}", [pad(p, seq) for p in pairs])):
                p50 = time_pairs(pair, rows, rounds)
                res["results"][f"{runtime}, {mode}"] = {**p50, "speed-up": p50["untrimmed"] / p50["trimmed"]}
                print(f"{runtime}, {mode}: untrimmed {p50['untrimmed']:.2f} ms, trimmed {p50['trimmed']:.2f} ms "
                      f"({p50['untrimmed'] / p50['trimmed']:.2f}x)", flush=True)
    res["load_average_end"] = os.getloadavg()[0]
    m = res["machine"]
    lines = [f"# Siamese ONNX graph: sentence rows trimmed in the graph or not ({res['model']})", "",
             f"{res['date']}, `{res['command']}`; {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch "
             f"{m['torch']}, onnxruntime {m['onnxruntime']}; load average {m.get('load_average', 0):.2f} at start, "
             f"{res['load_average_end']:.2f} at the end.", "",
             f"{n} MRPC dev pairs (mean {res['mean_pair_tokens']:.1f} tokens per pair row), batch 1, 1 thread, fused "
             f"graph; p50 over {rounds} passes, the two graphs called in turn for each pair.", "",
             "| runtime, inputs | untrimmed rows (ms) | trimmed rows (ms) | speed-up |", "|---|---:|---:|---:|"]
    for key, r in res["results"].items():
        lines.append(f"| {key} | {r['untrimmed']:.2f} | {r['trimmed']:.2f} | {r['speed-up']:.2f}x |")
    from mobilebert import atomic

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic.write_text(out.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
