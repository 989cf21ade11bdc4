"""The study report's section on pre-training seeds (benchmarks/kt_study_report.py): the AdamW pair (`bare-adamw`,
`pkt-adamw`) pre-trained again from other `run.seed` values, and whether PKT's lead over bare holds across them.
"""

from __future__ import annotations

import statistics

from kt_study_report import METRIC, PRETRAIN_SEEDS, SEED_PAIR, TASKS, mean_std, seed_averages, summarise


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
