"""Knowledge-transfer study, latency goal (issue 11: "it runs at least 2x faster than the teacher in ONNX Runtime
int8"): teacher against the student shaped from it, timed interleaved and repeated, so the ratio carries its spread.

The study's `bench` cell times each model's setting one after the other (30 runs, p50), and gave int8 ratios of
2.15x (docs/kt-study.md) and 1.90x (docs/kt-study-x4.md, under load), either side of the goal. Here the two models'
ONNX Runtime sessions (1 thread, batch 1, seq 128; the graphs `mobilebert bench` builds: NoNorm folded, linears
fused) are called alternately, one call each per round (mobilebert.recipes.bench.time_interleaved), so machine
noise hits both alike; `--repeats` such blocks give a p50 ratio each, reported as mean ± std with the load average
at both ends. Latency does not depend on the weights: random ones are timed.

    python benchmarks/kt_latency.py                  # MiniLM and its students -> docs/kt-latency.md, .json
    python benchmarks/kt_latency.py --heads 6,4      # also the student with 6 and with 4 heads (the default)
    python benchmarks/kt_latency.py --report         # re-render docs/kt-latency.md from docs/kt-latency.json
    python benchmarks/kt_latency.py --smoke --out DIR   # seconds: the debug presets (the tests)
    python benchmarks/kt_latency.py --pooling siamese   # both as bi-encoders -> docs/kt-latency-siamese.md, .json

With `--pooling siamese` both models are `model.pooling=siamese` classifiers, as exported: the graph splits each
pair row into its two sentence rows. The inputs are single sentences of seq tokens, so both rows are seq long (the
ONNX graph trims them to the longer sentence, which is the whole row here) and a call runs the encoder on 2 x seq
tokens. Real pairs are shorter: benchmarks/siamese_trim.py.

Costs ~2 min on an idle 2-core machine (export ~1 min, 5 x 200 rounds); run it with nothing else on the cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

RUNTIMES = ("ort-fp32", "ort-int8")


def pooling_tag(pooling: str) -> str:
    """"" for [CLS] (the original files), "-siamese" etc. otherwise: reports, graphs and presets of their own."""
    return "" if pooling == "cls" else f"-{pooling}"


def configs(smoke: bool, heads=(), pooling: str = "cls") -> dict:
    """{"teacher": cfg, "student": cfg, "student-hN": cfg, ...}: MiniLM, `student.preset=from-teacher`, and that
    student with N attention heads for each N in `heads` (debug presets with --smoke); every classifier reads
    `pooling` (classifier_pooling)."""
    from mobilebert.distill.shapes import from_teacher_config
    from mobilebert.presets import get_config

    if smoke:
        teacher, student = get_config("debug-bert"), get_config("debug-mobilebert")
        shaped = lambda n: student.replace(num_attention_heads=n)
    else:
        from kt_study import minilm_dir  # noqa: E402  (beside this file)

        from mobilebert.checkpoint import load_config

        teacher = load_config(minilm_dir()).replace(architectures=None)
        student = from_teacher_config(teacher)
        shaped = lambda n: from_teacher_config(teacher, {"num_attention_heads": n}, key="student")
    cfgs = {"teacher": teacher, "student": student, **{f"student-h{n}": shaped(n) for n in heads}}
    return {name: cfg.replace(classifier_pooling=pooling) for name, cfg in cfgs.items()}


def measure(cfgs: dict, workdir: Path, seq: int, rounds: int, repeats: int, profile_runs: int = 20,
            log=print) -> dict:
    """p50 per model, runtime and repeat, and the teacher/student ratio of each repeat."""
    import gc

    from mobilebert.presets import PRESETS
    from mobilebert.recipes.bench import ModelArtifacts, machine_info, time_interleaved

    pooling = {cfg.classifier_pooling for cfg in cfgs.values()}.pop()
    tag = pooling_tag(pooling)  # graphs of its own: ModelArtifacts reuses a file it finds
    for name, cfg in cfgs.items():
        PRESETS[f"kt-{name}{tag}"] = lambda cfg=cfg: cfg
    arts = {name: ModelArtifacts(f"kt-{name}{tag}", workdir, RUNTIMES, seq, log) for name in cfgs}
    machine = machine_info()
    out = {"machine": machine, "seq": seq, "threads": 1, "rounds": rounds, "repeats": repeats, "pooling": pooling,
           "params": {name: sum(p.numel() for p in art.plain.parameters()) for name, art in arts.items()},
           "heads": {name: cfg.num_attention_heads for name, cfg in cfgs.items()},
           "sizes": {name: art.sizes for name, art in arts.items()}, "runtimes": {}}
    for runtime in RUNTIMES:
        fns = None
        gc.collect()  # free the previous runtime's sessions and their thread pools first (see run_bench)
        fns = {name: art.runner(runtime, seq, 1) for name, art in arts.items()}
        blocks = []
        for r in range(repeats):
            p50 = time_interleaved(fns, rounds)
            ratios = {name: p50["teacher"] / ms for name, ms in p50.items() if name != "teacher"}
            blocks.append({"p50_ms": p50, "ratio": ratios, "load": os.getloadavg()[0]})
            log(f"{runtime} repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in p50.items())
                + f" (load {blocks[-1]['load']:.2f})")
        out["runtimes"][runtime] = blocks
    out["load_average_end"] = os.getloadavg()[0]
    # Profiled after the timing, one model at a time: the profiler's own overhead stays out of the ratios.
    from onnx_profile import profile  # noqa: E402  (beside this file)

    out["profile_runs"] = profile_runs
    out["profile"] = {name: profile(str(art.paths["ort-int8"]), seq, profile_runs) for name, art in arts.items()}
    for p in out["profile"].values():
        p["per_shape"] = {f"{k}x{n}": v for (k, n), v in p["per_shape"].items()}  # JSON keys
    return out


def summary(res: dict) -> dict:
    """{runtime: {student: {"teacher"|"student"|"ratio": (mean, std) over repeats, "min_ratio": float}}}."""
    std = lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else 0.0
    rows = {}
    for runtime, blocks in res["runtimes"].items():
        rows[runtime] = {}
        for name in blocks[0]["ratio"]:
            cols = {"teacher": [b["p50_ms"]["teacher"] for b in blocks], "student": [b["p50_ms"][name] for b in blocks],
                    "ratio": [b["ratio"][name] for b in blocks]}
            rows[runtime][name] = {k: (float(np.mean(v)), std(v)) for k, v in cols.items()}
            rows[runtime][name]["min_ratio"] = float(min(cols["ratio"]))
    return rows


def write_report(res: dict, out: Path, command: str) -> None:
    from mobilebert import atomic

    m, s = res["machine"], summary(res)
    params = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in res["params"].items())
    lines = ["# Knowledge-transfer study: teacher against student latency\n",
             f"Written by `{command}` (benchmarks/kt_latency.py) on {res['date']}: {m['cpu']}, {m['cores']} cores, "
             f"Python {m['python']}, torch {m['torch']}, ONNX Runtime {m['onnxruntime']}; load average "
             f"{m.get('load_average', float('nan')):.2f} at the start, {res['load_average_end']:.2f} at the end; "
             f"{res['wall_s']:.0f} s.\n",
             f"Batch 1, seq {res['seq']}, 1 thread; p50 over {res['rounds']} interleaved rounds (one call of each "
             f"model per round), {res['repeats']} repeats: mean ± std over repeats. `student` is the study's "
             f"(`student.preset=from-teacher`: the teacher's {res['heads']['student']} heads); `student-hN` the same "
             f"with N heads (`student.overrides={{num_attention_heads: N}}`). Parameters: {params}.\n",
             *([f"Both are `model.pooling={res['pooling']}` classifiers (bi-encoders), as exported: the graph splits "
                f"each pair row into its two sentence rows. The timed inputs are single sentences of {res['seq']} "
                f"tokens (as every `bench` input), so both rows are {res['seq']} tokens long and one call runs the "
                f"encoder on 2 x {res['seq']} tokens.\n"] if res.get("pooling", "cls") != "cls" else []),
             "| runtime | model | teacher p50 ms | model p50 ms | teacher / model | smallest of the repeats |",
             "|---|---|---:|---:|---:|---:|"]
    for runtime, students in s.items():
        for name, r in students.items():
            (tm, ts), (sm, ss), (rm, rs) = r["teacher"], r["student"], r["ratio"]
            lines.append(f"| {runtime} | {name} | {tm:.2f} ± {ts:.2f} | {sm:.2f} ± {ss:.2f} | {rm:.2f}x ± {rs:.2f} "
                         f"| {r['min_ratio']:.2f}x |")
    (mean, std), n = s["ort-int8"]["student"]["ratio"], res["repeats"]
    se = std / n ** 0.5  # the mean ratio's standard error: the goal is on the mean, not on one repeat
    held = "held" if mean - 2 * se >= 2 else ("not held" if mean + 2 * se < 2 else "unsettled")
    lines += ["", f"Goal (the study's student >= 2x faster than the teacher in ONNX Runtime int8): {mean:.2f}x ± "
              f"{std:.2f} over {n} repeats (standard error {se:.2f}), **{held}** (held: mean - 2 x standard error >= "
              "2; not held: mean + 2 x standard error < 2).", "",
              f"Where the int8 time goes (ONNX Runtime's profiler, kernel time per call over {res['profile_runs']} "
              "calls, one model at a time): weight GEMMs (dynamic int8) with their rate; attention (QK^T, softmax, "
              "context: the softmax and each head's kernel calls scale with heads x seq^2, not with the width); "
              "everything else (adds, transposes, ReLU/GELU, norms, embedding).\n",
              "| model | heads | kernel ms | weight GEMMs ms | GFLOP/s | attention ms | other ms |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, p in res["profile"].items():
        other = p["total_ms"] - p["gemm_ms"] - p["attention_ms"]
        lines.append(f"| {name} | {res['heads'][name]} | {p['total_ms']:.2f} | {p['gemm_ms']:.2f} | "
                     f"{p['gemm_gflops']:.0f} | {p['attention_ms']:.2f} | {other:.2f} |")
    atomic.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pooling", choices=("cls", "siamese"), default="cls",
                    help="what the classifiers read (model.pooling); siamese: bi-encoders, two sentence rows per pair")
    ap.add_argument("--out", help="report stem: writes OUT.md, OUT.json (default docs/kt-latency[-siamese])")
    ap.add_argument("--workdir", help="exported graphs (default runs/kt-latency[-siamese])")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--heads", default="6,4", help="also time the student with these head counts ('' for none)")
    ap.add_argument("--smoke", action="store_true", help="debug presets, a few rounds (the tests)")
    ap.add_argument("--report", action="store_true", help="only re-render OUT.md from OUT.json")
    args = ap.parse_args()
    if args.rounds < 1 or args.repeats < 1 or args.seq < 2:
        ap.error("--rounds and --repeats must be >= 1 and --seq >= 2")
    try:
        heads = [int(h) for h in args.heads.split(",") if h]
    except ValueError:
        ap.error(f"--heads: {args.heads!r} is not a comma-separated list of whole numbers")
    if args.smoke:
        args.rounds, args.repeats, args.seq = min(args.rounds, 3), min(args.repeats, 2), min(args.seq, 16)
    from mobilebert import atomic
    from mobilebert.errors import ConfigError

    suffix = pooling_tag(args.pooling)
    out = Path(args.out or REPO / "docs" / f"kt-latency{suffix}")
    workdir = Path(args.workdir or REPO / "runs" / f"kt-latency{suffix}")
    command = "python benchmarks/kt_latency.py" + (" --smoke" if args.smoke else "") + \
        (f" --pooling {args.pooling}" if suffix else "")
    if args.report:
        try:
            res = json.loads(out.with_suffix(".json").read_text())
        except (OSError, ValueError) as e:
            sys.exit(f"kt_latency: {out.with_suffix('.json')}: cannot read the results ({e}); run without --report")
        write_report(res, out, res.get("command", command))
        print(out.with_suffix(".md").read_text())
        return 0
    t0 = time.time()
    try:
        cfgs = configs(args.smoke, heads, args.pooling)
    except ConfigError as e:  # a head count that does not divide the student's widths
        sys.exit(f"kt_latency: --heads {args.heads}: {e}")
    res = measure(cfgs, workdir, args.seq, args.rounds, args.repeats, 3 if args.smoke else 20)
    res["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    res["wall_s"], res["command"] = time.time() - t0, command
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out.with_suffix(".json"), res, indent=1)
    write_report(res, out, command)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
