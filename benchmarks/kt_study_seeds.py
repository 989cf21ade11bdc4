"""The study report's section on pre-training seeds (benchmarks/kt_study_report.py): the AdamW pair (`bare-adamw`,
`pkt-adamw`) pre-trained again from other `run.seed` values, and whether PKT's lead over bare holds across them.
"""

from __future__ import annotations

import statistics

from kt_study_report import METRIC, PRETRAIN_SEEDS, ROWS, SEED_PAIR, TASKS, mean_std, seed_averages, summarise


def _pm(xs, n_all: int, scale: float = 100, digits: int = 1) -> str:
    """mean ± std of the values that exist, with (n=k) when only k of the n_all exist; "–" when none."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m, sd = mean_std([scale * x for x in xs])
    return f"{m:.{digits}f} ± {sd:.{digits}f}" + (f" (n={len(xs)})" if len(xs) < n_all else "")


# MRPC dev (../shared/data/glue/MRPC/dev.tsv): 279 of 408 pairs are paraphrases, so all-positive F1 = 2*279/(279+408)
MRPC_FLOOR = 2 * 279 / (279 + 408)


def _and(xs) -> str:
    """1 -> "1"; 1, 2 -> "1 and 2"; 1, 2, 3 -> "1, 2 and 3"."""
    xs = [str(x) for x in xs]
    return " and ".join([", ".join(xs[:-1]), xs[-1]] if len(xs) > 1 else xs)


def seeds_section(cells: dict, seeds) -> list[str]:
    """The AdamW pair over pre-training seeds (rows *-s1, *-s2), when any of them has a score: each row's figure as
    the mean ± std of its pre-training runs' means, PKT - bare per pre-training seed, and the goal against bare
    judged, over the seeds whose pair has every task, on the std of every (pre-training seed, fine-tuning seed)
    average, which holds both kinds of noise."""
    rows = summarise(cells, seeds)
    if all(rows[r]["zero_shot"] is None for _, runs in SEED_PAIR.values() for r in runs[1:]):
        return []
    cols, n_seeds = [*TASKS, "avg"], len(SEED_PAIR["pkt"][1])
    lines = ["", "## Pre-training seeds (the AdamW pair)", "",
             f"`bare-adamw` and `pkt-adamw` pre-trained again with `run.seed` {_and(PRETRAIN_SEEDS)} "
             "(the student's init, the data order, the masking, the projections), the same budget and fine-tuning "
             "seeds. Each figure: mean ± std over the pre-training runs of their means over fine-tuning seeds; "
             f"(n=k): only k of the {n_seeds} runs have it yet.", "",
             "| row | zero-shot STS-B | " + " | ".join(f"{t.upper()} ({METRIC[t]})" for t in TASKS) + " | average |",
             "|---|---:|" + "---:|" * len(cols)]
    for label, runs in SEED_PAIR.values():
        zs = [rows[r]["zero_shot"] for r in runs]
        lines.append(f"| {label} | {_pm(zs, n_seeds, 1, 3)} | "
                     + " | ".join(_pm([rows[r][c][0] if rows[r][c] else None for r in runs], n_seeds) for c in cols) + " |")
    (_, bare), (_, pkt) = SEED_PAIR.values()
    for i, (b, p) in enumerate(zip(bare, pkt)):
        diff = lambda c: (f"{100 * (rows[p][c][0] - rows[b][c][0]):+.1f}" if rows[p][c] and rows[b][c] else "–")
        z = (f"{rows[p]['zero_shot'] - rows[b]['zero_shot']:+.3f}"
             if rows[p]["zero_shot"] is not None and rows[b]["zero_shot"] is not None else "–")
        lines.append(f"| PKT - bare, pre-training seed {i} | {z} | " + " | ".join(diff(c) for c in cols) + " |")
    # judged on the pre-training seeds whose pair has finished every task; a seed still running does not hold it up
    done = [i for i, (b, p) in enumerate(zip(bare, pkt)) if all(rows[r][t] for r in (b, p) for t in TASKS)]
    # every (pre-training seed, fine-tuning seed) average of each row: its std holds both kinds of noise
    per_run = {k: [a for i in done for a in seed_averages(cells, runs[i], seeds)]
               for k, (_, runs) in SEED_PAIR.items()}
    name = ("PKT (AdamW) beats bare (AdamW) on every task with each pre-training seed, and on the average by "
            "> 2 x the pooled std over every pre-training x fine-tuning run")
    if len(done) >= 2 and all(len(v) > 1 for v in per_run.values()):
        # the two halves are reported apart, so a tie on one task does not hide how the average fares
        lost = [t.upper() for t in TASKS if any(rows[pkt[i]][t][0] <= rows[bare[i]][t][0] for i in done)]
        gap = statistics.fmean(per_run["pkt"]) - statistics.fmean(per_run["bare"])
        pooled = ((statistics.stdev(per_run["pkt"]) ** 2 + statistics.stdev(per_run["bare"]) ** 2) / 2) ** 0.5
        verdict = (f"pre-training seeds {', '.join(map(str, done))}: average {100 * gap:+.1f} vs 2 x "
                   f"{100 * pooled:.1f} (n = {len(per_run['pkt'])} / {len(per_run['bare'])} runs): "
                   f"{'held' if gap > 2 * pooled else 'not held'}; every task: "
                   + (f"not on {', '.join(lost)}" if lost else "held"),
                   "held" if not lost and gap > 2 * pooled else "not held")
    else:
        verdict = ("–", "pending")
    lines += ["", "| check | measured | verdict |", "|---|---|---|", f"| {name} | {verdict[0]} | **{verdict[1]}** |"]
    if any(rows[runs[i]]["mrpc"][0] < MRPC_FLOOR + 0.005 for i in done for _, runs in SEED_PAIR.values()):
        lines += ["", f"MRPC dev: answering 'paraphrase' for every pair scores F1 {100 * MRPC_FLOOR:.1f}; a row within "
                  "half a point of it has learnt next to nothing of the task, so a tie there says little either way."]
    return lines


# the paper's orderings over the AdamW rows (Table 8: PKT > JKT > AKT; Table 9: + attention > + feature maps > bare)
SEED_CHAINS = (("Table 8: PKT > JKT > AKT", ("pkt-adamw", "jkt-adamw", "akt-adamw")),
               ("Table 9: + attention > + feature maps (+ distillation) > bare",
                ("pkt-adamw", "pkt-fmt-adamw", "bare-adamw")))


def _runs(row: str) -> dict[int, str]:
    """pre-training seed -> the study row of `row` pre-trained from it (seed 0: the row itself)."""
    return {0: row, **{int(r.rsplit("-s", 1)[1]): r for r in ROWS if r.startswith(row + "-s")
                       and r.rsplit("-s", 1)[1].isdigit()}}


def orderings_section(cells: dict, seeds) -> list[str]:
    """Table 8 and Table 9 over the pre-training seeds the rows of each chain share (each row's figure per seed: its
    mean over fine-tuning seeds), when some row of a chain has run from a second seed. Judged on the means over the
    shared seeds, like the one-seed checks above; each gap is set beside the pooled std over every pre-training x
    fine-tuning run of the two rows, and the number of seeds at which the chain holds alone is given."""
    rows = summarise(cells, seeds)
    chain_rows = dict.fromkeys(r for _, chain in SEED_CHAINS for r in chain)
    runs_of = {row: _runs(row) for row in chain_rows}  # row -> {pre-training seed: study row}
    finished = {row: [s for s, r in runs_of[row].items() if rows[r]["zero_shot"] is not None
                      and all(rows[r][t] for t in TASKS)] for row in chain_rows}
    covered = SEED_PAIR["bare"][1] + SEED_PAIR["pkt"][1]  # the pair over seeds has the section above
    if all(len(finished[r]) < 2 for r in chain_rows if r not in covered):
        return []
    lines = ["", "## The paper's orderings over pre-training seeds (AdamW rows)", "",
             "Each figure: mean ± std over the pre-training runs (seed 0: the row itself; seed N: ROW-sN) of their "
             "means over fine-tuning seeds, for the runs with every cell finished.", "",
             "| row | pre-training seeds | zero-shot STS-B | average | per seed: average |", "|---|---|---:|---:|---|"]
    for row in chain_rows:
        runs = [runs_of[row][s] for s in finished[row]]
        lines.append(f"| {row} | {_and(finished[row]) or '–'} | {_pm([rows[r]['zero_shot'] for r in runs], 0, 1, 3)} "
                     f"| {_pm([rows[r]['avg'][0] for r in runs], 0, 100, 2)} | "
                     + ", ".join(f"{100 * rows[r]['avg'][0]:.2f}" for r in runs) + " |")
    lines += ["", "| check | measured | verdict |", "|---|---|---|"]
    for name, chain in SEED_CHAINS:
        shared = sorted(set.intersection(*(set(finished[r]) for r in chain)))
        # (measure, a run's figure, format, a row's values over the shared seeds whose std is the noise): zero-shot
        # has one value per pre-training run; the average has one per (pre-training, fine-tuning) run, both noises
        for what, value, fmt, spread in (
                ("fine-tuned average", lambda r: 100 * rows[r]["avg"][0], ".2f",
                 lambda row: [100 * x for s in shared for x in seed_averages(cells, runs_of[row][s], seeds)]),
                ("zero-shot STS-B", lambda r: rows[r]["zero_shot"], ".3f",
                 lambda row: [rows[runs_of[row][s]]["zero_shot"] for s in shared])):
            label = f"{name}, {what}, over the pre-training seeds every row has"
            if len(shared) < 2:
                lines.append(f"| {label} | – | **pending** |")
                continue
            mean = {r: statistics.fmean(value(runs_of[r][s]) for s in shared) for r in chain}
            at_each = sum(all(value(runs_of[a][s]) > value(runs_of[b][s]) for a, b in zip(chain, chain[1:]))
                          for s in shared)
            gaps = []
            for a, b in zip(chain, chain[1:]):
                sd = [statistics.stdev(spread(r)) for r in (a, b)]
                gaps.append(f"{mean[a] - mean[b]:+{fmt}} vs std {((sd[0] ** 2 + sd[1] ** 2) / 2) ** 0.5:{fmt}}")
            held = all(mean[a] > mean[b] for a, b in zip(chain, chain[1:]))
            lines.append(f"| {label} | seeds {_and(shared)}: " + " > ".join(f"{r} {mean[r]:{fmt}}" for r in chain)
                         + f" (gaps {'; '.join(gaps)}); at each seed alone: held at {at_each} of {len(shared)} | "
                         f"**{'held' if held else 'not held'}** |")
    return lines
