"""Table, goal checks and plot of the knowledge-transfer study (benchmarks/kt_study.py), from its results file.

`write_report(results, out_dir, budget, name)` writes out_dir/NAME.md and out_dir/NAME.png (NAME: kt-study, or
kt-study-xK for `--scale K`); it renders whatever cells are finished (a partial study shows "–" and "pending"), so it
can run after every sitting.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

# the AdamW pair pre-trained again from these run.seed values (rows bare-adamw-sN, pkt-adamw-sN; seed 0: the plain pair)
PRETRAIN_SEEDS = (1, 2, 3)
# rows pre-trained again from run.seed=N as ROW-sN, the row's settings otherwise (kt_study_rows.ROW_SETTINGS)
RESEEDED_ROWS = {1: ("pkt-adamw-cls", "jkt-adamw", "akt-adamw", "pkt-fmt-adamw"), 2: ("jkt-adamw", "akt-adamw"),
                 3: ("jkt-adamw", "akt-adamw")}
ROWS = ("teacher", "random", "bare", "pkt-fmt", "pkt-fmt-at", "jkt", "akt", "pkt-clean", "bare-adamw", "pkt-adamw",
        "pkt-fmt-adamw", "jkt-adamw", "akt-adamw", "pkt-adamw-h4", "pkt-adamw-cls",
        *(f"{pair}-s{seed}" for seed in PRETRAIN_SEEDS for pair in ("bare-adamw", "pkt-adamw")), "pkt-adamw-cls-h4",
        "pkt-adamw-cls-h4-s1", *(f"{row}-s{seed}" for seed, rows in RESEEDED_ROWS.items() for row in rows))
TASKS = ("sst-2", "mrpc", "sts-b", "rte")
LABELS = {"teacher": "teacher (all-MiniLM-L6-v2)", "random": "student, random weights", "bare": "bare (MLM + NSP, no teacher)",
          "pkt-fmt": "PKT, feature maps + final stage", "pkt-fmt-at": "PKT, feature maps + attention + final stage",
          "jkt": "JKT + final stage", "akt": "AKT",
          "pkt-clean": "PKT, feature maps + attention + final stage, clean transfer input (kt.input=clean)",
          "bare-adamw": "bare, AdamW lr 1e-3 (not LAMB)",
          "pkt-adamw": "PKT, feature maps + attention + final stage, AdamW lr 1e-3",
          "pkt-fmt-adamw": "PKT, feature maps + final stage, AdamW lr 1e-3",
          "jkt-adamw": "JKT + final stage, AdamW lr 1e-3", "akt-adamw": "AKT, AdamW lr 1e-3",
          "pkt-adamw-h4": "PKT, feature maps + attention + final stage, AdamW lr 1e-3, 4 heads (teacher's in "
                          "groups of 3)",
          "pkt-adamw-cls": "PKT, feature maps + attention + final stage, AdamW lr 1e-3, [CLS] weighted as 127 tokens "
                           "(kt.cls_weight=127)",
          **{f"{pair}-s{seed}": f"{label}, AdamW lr 1e-3, pre-training seed {seed}" for seed in PRETRAIN_SEEDS
             for pair, label in (("bare-adamw", "bare"), ("pkt-adamw", "PKT, feature maps + attention + final stage"))}}
LABELS["pkt-adamw-cls-h4"] = LABELS["pkt-adamw-cls"] + ", 4 heads (teacher's in groups of 3)"
LABELS.update({f"{row}-s{seed}": LABELS[row] + f", pre-training seed {seed}"
               for seed, rows in RESEEDED_ROWS.items() for row in rows})
LABELS["pkt-adamw-cls-h4-s1"] = LABELS["pkt-adamw-cls-h4"] + ", pre-training seed 1"
# the AdamW pair over pre-training seeds (run.seed 0, 1, 2, ...): (label, the rows of seeds 0, 1, ...)
SEED_PAIR = {k: (label, (pair, *(f"{pair}-s{seed}" for seed in PRETRAIN_SEEDS)))
             for k, label, pair in (("bare", "bare (AdamW)", "bare-adamw"),
                                    ("pkt", "PKT fmt + at + final stage (AdamW)", "pkt-adamw"))}
METRIC = {"sst-2": "acc", "mrpc": "F1", "sts-b": "Spearman", "rte": "acc"}


GOAL_NAMES = {"pkt-fmt-at": "PKT (fmt + at)", "pkt-clean": "PKT (fmt + at, kt.input=clean)",
              "pkt-adamw": "PKT (fmt + at, AdamW)", "pkt-adamw-h4": "PKT (fmt + at, AdamW, 4 heads)",
              "pkt-adamw-cls": "PKT (fmt + at, AdamW, [CLS] x127)",
              "pkt-adamw-cls-h4": "PKT (fmt + at, AdamW, [CLS] x127, 4 heads)",
              "pkt-adamw-cls-h4-s1": "PKT (fmt + at, AdamW, [CLS] x127, 4 heads, pre-training seed 1)",
              "pkt-adamw-s1": "PKT (fmt + at, AdamW, pre-training seed 1)"}
# the bare row of the same optimizer and pre-training seed; "bare" otherwise
BASELINE = {**{row: ("bare-adamw", "bare (AdamW)") for row in ("pkt-adamw", "pkt-adamw-h4", "pkt-adamw-cls",
                                                                 "pkt-adamw-cls-h4")},
            **{row: ("bare-adamw-s1", "bare (AdamW, seed 1)") for row in ("pkt-adamw-s1", "pkt-adamw-cls-h4-s1")}}
KINDS = {"finetune": "[CLS] pooling (the checkpoints' own)", "finetune-mean": "mean pooling (model.pooling=mean)",
         "finetune-siamese": "siamese pairs (model.pooling=siamese)"}
POOLING_WHAT = {"mean": "the classifier reads the mean of the last-layer states over the real tokens instead of [CLS]",
                "siamese": "each sentence of a pair is encoded alone and the classifier reads [u, v, |u - v|, u * v] "
                           "of the two mean states (sentence-transformers' bi-encoder)"}


def _scores(cells: dict, row: str, task: str, kind: str = "finetune") -> dict[int, float]:
    """seed -> dev score of the finished fine-tuning runs of (row, task); kind: the cells' key prefix."""
    out = {}
    for key, rec in cells.items():
        parts = key.split("/")
        if parts[0] == kind and parts[1] == row and parts[2] == task and rec.get("score") is not None:
            out[int(parts[3])] = float(rec["score"])
    return out


def mean_std(xs) -> tuple[float, float] | None:
    xs = list(xs)
    if not xs:
        return None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fmt(ms, n_planned: int) -> str:
    if ms is None:
        return "–"
    text = f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"
    return text if ms[2] >= n_planned else f"{text} (n={ms[2]})"


def seed_averages(cells: dict, row: str, seeds, kind: str = "finetune") -> list[float]:
    """The four-task average of each fine-tuning seed that has all four tasks."""
    out = []
    for seed in seeds:
        vals = [_scores(cells, row, t, kind).get(seed) for t in TASKS]
        if all(v is not None for v in vals):
            out.append(statistics.fmean(vals))
    return out


def summarise(cells: dict, seeds, kind: str = "finetune") -> dict:
    """Per row: task -> (mean, std, n); 'avg' over tasks per seed (seeds with all four tasks) -> (mean, std, n)."""
    rows = {}
    for row in ROWS:
        r = {}
        for task in TASKS:
            ms = mean_std(_scores(cells, row, task, kind).values())
            r[task] = None if ms is None else (*ms, len(_scores(cells, row, task, kind)))
        per_seed = seed_averages(cells, row, seeds, kind)
        ms = mean_std(per_seed)
        r["avg"] = None if ms is None else (*ms, len(per_seed))
        z = cells.get(f"zeroshot/{row}")
        r["zero_shot"] = z["spearman"] if z else None
        r["params"] = z["params"] if z else None
        rows[row] = r
    return rows


def goals(rows: dict, bench: dict | None, seeds, row: str = "pkt-fmt-at") -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) for the issue's four goals, of the PKT (fmt + at) student `row` (pkt-clean: the
    same with kt.input=clean); verdict held / not held / pending."""
    base, base_name = BASELINE.get(row, ("bare", "bare"))
    pkt, bare, teacher = rows[row], rows[base], rows["teacher"]
    who, beats = GOAL_NAMES[row], f"beats {base_name}"
    out = []
    if all(pkt[t] and bare[t] for t in TASKS) and pkt["avg"] and bare["avg"]:
        every = all(pkt[t][0] > bare[t][0] for t in TASKS)
        pooled = ((pkt["avg"][1] ** 2 + bare["avg"][1] ** 2) / 2) ** 0.5
        gap = pkt["avg"][0] - bare["avg"][0]
        out.append((f"{who} {beats} on every task, and on the average by > 2 x pooled std",
                    f"tasks: {', '.join(f'{t} {100 * (pkt[t][0] - bare[t][0]):+.1f}' for t in TASKS)}; average "
                    f"{100 * gap:+.1f} vs 2 x {100 * pooled:.1f}", "held" if every and gap > 2 * pooled else "not held"))
    else:
        out.append((f"{who} {beats} on every task and on the average by > 2 x pooled std", "–", "pending"))
    if pkt["zero_shot"] is not None and teacher["zero_shot"] is not None:
        ratio = pkt["zero_shot"] / teacher["zero_shot"]
        out.append((f"{who} zero-shot STS-B >= 0.9 x the teacher's", f"{pkt['zero_shot']:.3f} / {teacher['zero_shot']:.3f}"
                    f" = {ratio:.2f}", "held" if ratio >= 0.9 else "not held"))
    else:
        out.append((f"{who} zero-shot STS-B >= 0.9 x the teacher's", "–", "pending"))
    if pkt["avg"] and teacher["avg"]:
        ratio = pkt["avg"][0] / teacher["avg"][0]
        out.append((f"{who} fine-tuned average >= 95% of the teacher's", f"{100 * pkt['avg'][0]:.1f} / "
                    f"{100 * teacher['avg'][0]:.1f} = {100 * ratio:.0f}%", "held" if ratio >= 0.95 else "not held"))
    else:
        out.append((f"{who} fine-tuned average >= 95% of the teacher's", "–", "pending"))
    lat = (bench or {}).get("latency", {})
    if "teacher/ort-int8" in lat and "student/ort-int8" in lat:
        speed = lat["teacher/ort-int8"]["p50_ms"] / lat["student/ort-int8"]["p50_ms"]
        out.append(("student >= 2x faster than the teacher in ONNX Runtime int8", f"{speed:.2f}x",
                    "held" if speed >= 2 else "not held"))
    else:
        out.append(("student >= 2x faster than the teacher in ONNX Runtime int8", "–", "pending"))
    return out


def orderings(rows: dict, suffix: str = "") -> list[tuple[str, str, str]]:
    """The paper's orderings on the fine-tuned average, and on zero-shot STS-B: reported, never tuned for.
    suffix "-adamw": the same chains over the AdamW rows (bare-adamw, pkt-adamw = PKT with attention, ...)."""
    avg = {r: 100 * rows[r]["avg"][0] for r in ROWS if rows[r]["avg"]}
    zero = {r: rows[r]["zero_shot"] for r in ROWS if rows[r]["zero_shot"] is not None}

    def chain(name, order, values, fmt):
        if not all(r in values for r in order):
            return (name, "–", "pending")
        held = all(values[a] > values[b] for a, b in zip(order, order[1:]))
        return (name, " > ".join(f"{r} {values[r]:{fmt}}" for r in order), "held" if held else "not held")

    pkt = "pkt-adamw" if suffix else "pkt-fmt-at"
    t8 = (pkt, "jkt" + suffix, "akt" + suffix)
    t9 = (pkt, "pkt-fmt" + suffix, "bare" + suffix)
    tag = " (AdamW rows)" if suffix else ""
    return [chain(f"Table 8{tag}: PKT > JKT > AKT", t8, avg, ".1f"),
            chain(f"Table 9{tag}: + attention > + feature maps (+ distillation) > bare", t9, avg, ".1f"),
            chain(f"Table 8{tag} on zero-shot STS-B (one pre-training seed)", t8, zero, ".3f"),
            chain(f"Table 9{tag} on zero-shot STS-B (one pre-training seed)", t9, zero, ".3f")]


def _table(rows: dict, seeds, mode: str, z_t) -> list[str]:
    lines = ["| row | params | zero-shot STS-B | " + " | ".join(f"{t.upper()} ({METRIC[t]})" for t in TASKS)
             + " | average |", "|---|---:|---:|" + "---:|" * (len(TASKS) + 1)]
    for row in ROWS:
        r = rows[row]
        z = "–" if r["zero_shot"] is None else f"{r['zero_shot']:.3f}" + (
            f" ({r['zero_shot'] / z_t:.2f}x)" if z_t and row != "teacher" else "")
        p = "–" if r["params"] is None else f"{r['params'] / 1e6:.1f}M"
        label = LABELS[row] if mode == "real" or row != "teacher" else "teacher (debug IB-BERT, smoke)"
        lines.append(f"| {label} | {p} | {z} | " + " | ".join(_fmt(r[t], len(seeds)) for t in TASKS)
                     + f" | {_fmt(r['avg'], len(seeds))} |")
    return lines


def variant(kind: str) -> tuple[str, int | None]:
    """A fine-tuning cells' key prefix, finetune[-POOLING][-eN] (kt_study.py --pooling mean|siamese, --epochs N):
    (the classifier pooling, the epochs when not the budget's)."""
    m = re.fullmatch(r"finetune(?:-(mean|siamese))?(?:-e(\d+))?", kind)
    return (m[1] if m and m[1] else "cls"), (int(m[2]) if m and m[2] else None)


def _variant_sections(cells: dict, seeds, mode: str, z_t, bench, command: str) -> list[str]:
    """One section per set of fine-tuning cells other than the study's own recipe (`kt_study.py --pooling mean`,
    `--epochs N`), when any of its cells has run: its table (the rows that have a cell) and its goal checks."""
    lines = []
    for kind in sorted({key.split("/")[0] for key in cells if key.startswith("finetune-")}):
        (pooling, epochs), n = variant(kind), sum(key.startswith(kind + "/") for key in cells)
        rows = summarise(cells, seeds, kind)
        title = ", ".join([KINDS["finetune" + ("" if pooling == "cls" else f"-{pooling}")]]
                          + ([f"{epochs} fine-tuning epochs (train.epochs={epochs})"] if epochs else []))
        flags = " ".join(([f"--pooling {pooling}"] if pooling != "cls" else [])
                         + ([f"--epochs {epochs}"] if epochs else []))
        what = ([POOLING_WHAT[pooling]] if pooling != "cls" else []) + (
            [f"every run fine-tunes for {epochs} epochs (best dev epoch)"] if epochs else [])
        lines += ["", f"## {title[0].upper()}{title[1:]}", "",
                  f"`{command} {flags}`: the same pre-trained rows and fine-tuning recipe, but "
                  f"{' and '.join(what)}. {n} of {len(ROWS) * len(TASKS) * len(seeds)} cells finished; rows "
                  "without a cell are left out.", ""]
        table = _table(rows, seeds, mode, z_t)
        lines += table[:2] + [line for row, line in zip(ROWS, table[2:]) if any(rows[row][t] for t in TASKS)]
        lines += ["", f"| check ({title}) | measured | verdict |", "|---|---|---|"]
        if kind == "finetune-mean":
            checks = goals(rows, bench, seeds)
            # the seed-1 AdamW pair: the pair whose students were on disk for these cells
            adamw = goals(rows, bench, seeds, "pkt-adamw-s1")  # its 95 % goal needs the teacher's mean-pooled cells
            checks = [checks[0], checks[2], adamw[0]] + orderings(rows)[:2]
        elif pooling == "siamese":  # the 4-head [CLS] student of pre-training seed 1, the one these cells ran on
            checks = [c for c in goals(rows, bench, seeds, "pkt-adamw-cls-h4-s1")[:3] if "zero-shot" not in c[0]]
        else:  # the AdamW rows, with and without the [CLS] weight, against bare (AdamW); zero-shot is not fine-tuned
            checks = [c for row in ("pkt-adamw", "pkt-adamw-cls") for c in goals(rows, bench, seeds, row)[:3]
                      if "zero-shot" not in c[0]]
        lines += [f"| {name} | {measured} | **{verdict}** |" for name, measured, verdict in checks]
    return lines


def markdown(results: dict, budget: dict, command: str = "python benchmarks/kt_study.py") -> str:
    cells, seeds = results["cells"], budget["seeds"]
    rows, bench = summarise(cells, seeds), cells.get("bench")
    # data, bench, the random student, the pre-trained rows (+ the smoke teacher), zero-shot and fine-tuning cells
    planned = 3 + (len(ROWS) - 2) + (results["mode"] == "smoke") + len(ROWS) * (1 + len(TASKS) * len(seeds))
    done = sum(not key.startswith("finetune-") for key in cells)
    z_t = rows["teacher"]["zero_shot"]
    lines = [f"# Knowledge-transfer study ({results['mode']} run)", "",
             f"Produced by `{command}` (see its docstring for the setup, the budget and how it was "
             f"chosen). {done} of {planned} cells finished. Scores are dev-set x 100, mean ± std "
             f"over {len(seeds)} fine-tuning seed(s); zero-shot = STS-B dev Spearman of mean-pooled last-layer states, "
             "no fine-tuning. Fine-tuned with the checkpoints' own [CLS] pooling; tables below, where they have run, "
             "fine-tune with mean pooling, as siamese pairs or for more epochs.", "",
             f"Pre-training per row: {budget['steps']} steps (rows with a final stage: {budget['kt_share']:.0%} KT, "
             f"the rest PD), batch {budget['batch']}, sequence length {budget['seq']}, LAMB lr {budget['lr']}. "
             f"Fine-tuning (one recipe): {' '.join(budget['finetune'])}; training sets capped at "
             f"{budget['caps']} (0 = all, seeded subset); dev sets "
             f"{'whole' if not budget['eval_cap'] else 'first ' + str(budget['eval_cap'])}.", ""]
    lines += _table(rows, seeds, results["mode"], z_t)
    lines += ["", "## Latency (ONNX Runtime, batch 1, 1 thread, seq 128, p50 / p90 ms)", ""]
    if bench:
        lat = bench["latency"]
        lines += ["| model | fp32 | int8 |", "|---|---:|---:|"]
        for who in ("teacher", "student"):
            cell = lambda rt: (f"{lat[f'{who}/{rt}']['p50_ms']:.1f} / {lat[f'{who}/{rt}']['p90_ms']:.1f}"
                               if f"{who}/{rt}" in lat else "–")
            lines.append(f"| {who} | {cell('ort-fp32')} | {cell('ort-int8')} |")
    else:
        lines.append("pending")
    if results["mode"] == "real":
        lines += ["", "This cell times one model after the other (30 runs each), so load that changes between them moves "
                  "the ratio. Timed interleaved and repeated on an idle machine, with 6- and 4-head students beside "
                  "the 12-head one: `docs/kt-latency.md` (`python benchmarks/kt_latency.py`)."]
    lines += ["", "## Goals (issue 11) and the paper's orderings", "", "| check | measured | verdict |", "|---|---|---|"]
    # pkt-clean and the AdamW rows: their three score goals (the latency goal is the 12-head student's, listed once
    # above; the 4-head student's latency: docs/kt-latency.md)
    checks = (goals(rows, bench, seeds)
              + [c for row in ("pkt-clean", "pkt-adamw", "pkt-adamw-h4", "pkt-adamw-cls", "pkt-adamw-cls-h4",
                               "pkt-adamw-cls-h4-s1")
                 for c in goals(rows, bench, seeds, row)[:3]]
              + orderings(rows) + orderings(rows, "-adamw"))
    for name, measured, verdict in checks:
        lines.append(f"| {name} | {measured} | **{verdict}** |")
    from kt_study_seeds import orderings_section, seeds_section  # they read this module's tables and summaries

    lines += seeds_section(cells, seeds) + orderings_section(cells, seeds)
    lines += _variant_sections(cells, seeds, results["mode"], z_t, bench, command)
    if results["mode"] == "real":
        lines += ["", "Why the missed goals are missed, layer by layer ([CLS] against mean pooling, and how far each "
                  "student's states are from the teacher's): `docs/kt-layers.md` (`python benchmarks/kt_layers.py`) "
                  "and the study's section in `docs/benchmarks.md`."]
    lines += ["", "## Cells: machine, versions, tokens, wall time", "",
              "| cell | wall | tokens / examples | finished | load avg | machine and versions |", "|---|---:|---:|---|---:|---|"]
    for key, rec in cells.items():
        env = rec.get("env", {})
        work = (f"{rec['tokens']:,} tokens" if rec.get("tokens") else
                f"{rec['examples_seen']:,} examples" if rec.get("examples_seen") else "–")
        gpu = f"{env['gpu']}, " if env.get("gpu") else ""
        # what CPU float sums depend on: the intra-op thread count and the kernels' ISA (kt_study_recover)
        sums = [f"{env['threads']} thread{'s' * (env['threads'] != 1)}"] if env.get("threads") else []
        sums += [env["isa"] + (" capped" if env.get("isa_caps") else "")] if env.get("isa") else []
        sums = f" ({', '.join(sums)})" if sums else ""
        machine = (f"{gpu}{env.get('cpu', '?')} x{env.get('cores', '?')}{sums}, py {env.get('python')}, "
                   f"torch {env.get('torch')}, ort {env.get('onnxruntime')}, @{env.get('commit')}")
        # a resumed run records only its last sitting (its wall clock and tokens; steps count from the checkpoint)
        sitting = " (last sitting: resumed)" if rec.get("resumed") else ""
        lines.append(f"| {key} | {rec.get('wall_s', 0) / 60:.1f} min{sitting} | {work} | {rec.get('finished', '')} | "
                     f"{env.get('load_average', '')} | {machine} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, budget: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = summarise(results["cells"], budget["seeds"])
    mean_rows = summarise(results["cells"], budget["seeds"], "finetune-mean")
    with_mean = any(mean_rows[r][t] for r in ROWS for t in TASKS)
    ratios = [4, 1, 1.6] if with_mean else [4, 1]
    fig, axes = plt.subplots(1, len(ratios), figsize=(13 + 3 * with_mean, 4.5), gridspec_kw={"width_ratios": ratios})
    ax, az = axes[0], axes[1]
    cols = list(TASKS) + ["avg"]
    width = 0.8 / len(ROWS)
    for i, row in enumerate(ROWS):
        vals = [rows[row][c] for c in cols]
        ax.bar([j + i * width for j in range(len(cols))], [100 * v[0] if v else 0 for v in vals], width,
               yerr=[100 * v[1] if v else 0 for v in vals], label=row, capsize=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], [c.upper() for c in cols])
    ax.set_ylabel("dev score x 100 (mean ± std over seeds)")
    ax.set_title(f"Fine-tuned, [CLS] pooling ({results['mode']} run)")
    ax.legend(fontsize=8, ncol=2)
    z = [rows[r]["zero_shot"] or 0 for r in ROWS]
    az.barh(list(ROWS), z, color=[f"C{i}" for i in range(len(ROWS))])
    az.invert_yaxis()
    az.set_title("zero-shot STS-B (Spearman)")
    if with_mean:  # per task, [CLS] against mean pooling, for the rows that have both
        am = axes[2]
        for i, (kind, rs) in enumerate((("[CLS]", rows), ("mean", mean_rows))):
            for j, task in enumerate(TASKS):
                pts = [(k, 100 * rs[r][task][0]) for k, r in enumerate(ROWS) if rs[r][task]]
                am.scatter([j + (i - 0.5) * 0.3] * len(pts), [v for _, v in pts], s=18, marker="o" if i else "x",
                           c=[f"C{k}" for k, _ in pts], label=kind if j == 0 else None)
        am.set_xticks(range(len(TASKS)), [t.upper() for t in TASKS])
        am.set_title("fine-tuned: [CLS] (x) vs mean pooling (o)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict, out_dir, budget: dict, name: str = "kt-study",
                 command: str = "python benchmarks/kt_study.py") -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    md.write_text(markdown(results, budget, command), encoding="utf-8")
    png = plot(results, budget, out / f"{name}.png")
    return [md] + ([png] if png else [])
