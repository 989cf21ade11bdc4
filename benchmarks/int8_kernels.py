"""Benchmark: ONNX Runtime int8 on x86 CPUs without VNNI, where the default u8 x s8 kernel can saturate.

On x86-64 with AVX2 (or AVX-512 without VNNI) ONNX Runtime multiplies uint8 activations by int8 weights with
VPMADDUBSW, which adds each pair of products in int16 and saturates at 32767 (ONNX Runtime's quantization docs,
"data type selection"); the docs name no such problem on VNNI CPUs or ARM (phones). Their two remedies are 7-bit
weights (`reduce_range`) and uint8 weights (the u8 x u8 kernel, which they say does not saturate). This script
quantizes the same fp32 graph of each fine-tuned classifier three ways with `quantize_onnx_dynamic` (per-channel,
the `mobilebert quantize` default) and reports, on the task's full dev set, each against its fp32 PyTorch model:
the GLUE metric, argmax agreement and the logit error; and each graph's latency (batch 1, seq 128, 1 thread, the
three sessions called in turn each round, `mobilebert.recipes.bench.time_interleaved`).

    python benchmarks/int8_kernels.py --model runs/bare-sst2/best:SST-2 --model DIR:MRPC --out docs/int8-kernels
    python benchmarks/int8_kernels.py --smoke --out DIR/x   # seconds: the repo's tiny SST-2 fixture, 64 dev rows
    python benchmarks/int8_kernels.py --model pkt=RUN1/best:SST-2 --model pkt=RUN2/best:SST-2 ...

Models given one LABEL (`--model LABEL=DIR:TASK`: the same model fine-tuned with other seeds) also get a summary,
mean ± std (sample std) over them per weight encoding. Writes OUT.md and OUT.json (--out OUT). Run it with nothing
else on the cores when the latency matters.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout
sys.path.insert(0, str(REPO / "benchmarks"))

from kt_study_report import mean_std  # noqa: E402  (beside this file)
from kt_study_rows import data_root  # noqa: E402

# (name, quantize_onnx_dynamic options); the first is `mobilebert quantize`'s default.
VARIANTS = [("u8 x s8 (default)", {}), ("u8 x s8, 7-bit weights (--reduce-range)", {"reduce_range": True}),
            ("u8 x u8 (--weight-type u8)", {"weight_type": "u8"})]
FIXTURE = REPO / "tests" / "fixtures" / "pre_restructure" / "finetune-sst2" / "best"


def measure(model_dir: Path, task: str, glue: Path, seq: int, rounds: int, limit: int = 0, log=print,
            label: str | None = None) -> dict:
    from mobilebert.export.onnx import export_onnx, find_vocab, load_for_export
    from mobilebert.export.runtime import load_session
    from mobilebert.quant.evaluate import compare, load_split, run_logits, session_logits_fn, torch_logits_fn
    from mobilebert.quant.ort import quantize_onnx_dynamic
    from mobilebert.recipes.bench import time_interleaved
    from mobilebert.tokenizer import Tokenizer

    model = load_for_export(model_dir)
    vocab = find_vocab(model_dir, None)
    tokenizer = Tokenizer.from_file(vocab)
    seq = min(seq, model.config.max_position_embeddings)
    dev = load_split(task, glue, "dev", tokenizer, seq, limit=limit)
    fp32 = run_logits(torch_logits_fn(model), dev)
    rows, fns = [], {}
    with tempfile.TemporaryDirectory() as work:
        plain = Path(work) / "fp32.onnx"
        export_onnx(model, plain, tokenizer=tokenizer, vocab_path=vocab)
        timing_row = tuple(np.asarray(t[:1]) for t in next(dev.batches(1)))  # one dev row, padded to seq
        timing_row = tuple(np.pad(t, ((0, 0), (0, seq - t.shape[1]))) for t in timing_row)
        for name, opts in VARIANTS:
            path = quantize_onnx_dynamic(plain, Path(work) / f"{len(rows)}.onnx", per_channel=True, **opts)
            session = load_session(path, threads=1)
            int8 = run_logits(session_logits_fn(session), dev)
            r = compare(dev, fp32, int8)
            rows.append({"variant": name, "options": opts, "metric": r.metric, "fp32": 100 * r.fp32,
                         "int8": 100 * r.int8, "drop": r.drop, "agreement": 100 * r.agreement,
                         "mean_abs_err": r.mean_abs_diff, "max_abs_err": float(np.abs(int8 - fp32).max()),
                         "rel_mean_err": r.mean_abs_diff / r.largest})
            fns[name] = lambda s=session: s(*timing_row)
            log(f"{model_dir} {name}: {r.metric} {rows[-1]['int8']:.2f} (fp32 {rows[-1]['fp32']:.2f}), agreement "
                f"{rows[-1]['agreement']:.2f}%, mean |logit error| {r.mean_abs_diff:.4f}")
        p50 = time_interleaved(fns, rounds)
    for row in rows:
        row["p50_ms"] = p50[row["variant"]]
        row["speed_vs_default"] = p50[VARIANTS[0][0]] / row["p50_ms"]
    c = model.config
    shape = (f"{c.num_hidden_layers} layers, {c.hidden_size} wide, {c.num_attention_heads} heads, "
             + ("NoNorm" if getattr(c, "normalization_type", "layer_norm") == "no_norm" else "LayerNorm"))
    return {"model": str(model_dir), "label": label, "shape": shape, "task": r.task, "examples": len(dev),
            "seq": seq, "largest_fp32_logit": r.largest, "rows": rows}


SUMMED = ("fp32", "int8", "drop", "agreement", "rel_mean_err", "p50_ms")


def summarize(models: list[dict]) -> list[dict]:
    """Per label given to more than one model (one model fine-tuned with several seeds) and per weight encoding:
    mean and sample std over those models of the scores, the drop, the agreement, the logit error relative to
    each model's largest fp32 logit, and p50."""
    groups: dict[str, list[dict]] = {}
    for m in models:
        if m.get("label"):
            groups.setdefault(m["label"], []).append(m)
    out = []
    for label, ms in groups.items():
        if len(ms) < 2:
            continue
        for i, (variant, _) in enumerate(VARIANTS):
            rows = [m["rows"][i] for m in ms]
            stat = {k: mean_std(r[k] for r in rows) for k in SUMMED}
            out.append({"label": label, "variant": variant, "n": len(ms), "task": ms[0]["task"],
                        "metric": rows[0]["metric"], **stat})
    return out


def write_report(res: dict, out: Path) -> None:
    from mobilebert import atomic

    lines = [f"# ONNX Runtime int8 kernels on {res['cpu']}", "",
             f"{res['date']}, `{res['command']}`; {res['versions']}. Per-channel dynamic int8 of the same fp32 graph;",
             "scores on the full dev set against the fp32 PyTorch model; latency p50 over "
             f"{res['rounds']} interleaved rounds (batch 1, 1 thread, the model's seq).", ""]
    for m in res["models"]:
        lines += [f"## {m['model']}: {m['shape']} ({m['task']}, {m['examples']} dev examples, seq {m['seq']}, "
                  f"largest fp32 logit {m['largest_fp32_logit']:.3f})", "",
                  f"| weights | {m['rows'][0]['metric']} fp32 | int8 | drop (points) | argmax agreement | "
                  "mean / max logit error | p50 ms | speed vs default |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in m["rows"]:
            lines.append(f"| {r['variant']} | {r['fp32']:.2f} | {r['int8']:.2f} | {r['drop']:+.2f} | "
                         f"{r['agreement']:.2f}% | {r['mean_abs_err']:.4f} / {r['max_abs_err']:.4f} | "
                         f"{r['p50_ms']:.2f} | {r['speed_vs_default']:.2f}x |")
        lines.append("")
    if res.get("summary"):
        pm = lambda ms, f="{:.2f}": f"{f.format(ms[0])} ± {ms[1]:.2f}"
        lines += ["## Summary: mean ± std over the models of one label", "",
                  "| label | n | weights | fp32 | int8 | drop (points) | argmax agreement | mean logit error / "
                  "largest fp32 logit | p50 ms |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for s in res["summary"]:
            lines.append(f"| {s['label']} ({s['task']} {s['metric']}) | {s['n']} | {s['variant']} | {pm(s['fp32'])} | "
                         f"{pm(s['int8'])} | {pm(s['drop'], '{:+.2f}')} | {pm(s['agreement'])}% | "
                         f"{pm(tuple(100 * x for x in s['rel_mean_err']))}% | {pm(s['p50_ms'])} |")
        lines.append("")
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines))
    atomic.write_text(out.with_suffix(".json"), json.dumps(res, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="[LABEL=]DIR:TASK",
                    help="a fine-tuned classifier and its GLUE task (repeatable); models of one LABEL are summarized")
    ap.add_argument("--glue", default=str(data_root() / "glue"))
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--smoke", action="store_true", help="the tiny SST-2 fixture, 64 dev rows, 5 rounds")
    ap.add_argument("--out", default="runs/int8-kernels", help="writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    from mobilebert.errors import UserError
    from mobilebert.quant.ort import int8_kernels_may_saturate
    from mobilebert.recipes.bench import machine_info
    from mobilebert.tasks.glue import get_task

    models = [(FIXTURE, "SST-2", None)] if args.smoke else []
    for spec in args.model:
        label, _, rest = spec.partition("=") if "=" in spec.split(":", 1)[0] else ("", "", spec)
        path, sep, task = rest.rpartition(":")
        if not sep or not Path(path, "config.json").is_file():
            ap.error(f"--model {spec}: give [LABEL=]DIR:TASK, DIR a checkpoint folder with config.json")
        try:
            regression = get_task(task).is_regression
        except UserError as e:
            ap.error(f"--model {spec}: {e}")
        if regression:
            ap.error(f"--model {spec}: {task} is a regression task; this benchmark compares classes (argmax)")
        other = next((t for _, t, lab in models if label and lab == label and t != task), None)
        if other:
            ap.error(f"--model {spec}: label {label!r} is already given to a {other} model; a label's models are "
                     "one model's seeds, on one task")
        models.append((Path(path), task, label or None))
    if not models:
        ap.error("give --model DIR:TASK (or --smoke)")
    limit, rounds = (64, 5) if args.smoke else (0, args.rounds)
    machine = machine_info()
    res = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python benchmarks/int8_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "cpu": machine.get("cpu", "?") + (" (x86 without VNNI)" if int8_kernels_may_saturate() else ""),
           "versions": ", ".join(f"{k} {v}" for k, v in machine.items() if k in ("python", "torch", "onnxruntime")),
           "rounds": rounds, "load_average": os.getloadavg()[0],
           "models": [measure(path, task, Path(args.glue), args.seq, rounds, limit, label=label)
                      for path, task, label in models]}
    res["summary"] = summarize(res["models"])
    write_report(res, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
