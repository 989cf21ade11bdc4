"""`mobilebert score`: score a predictions file against a gold file and print the metrics as JSON.

    mobilebert score squad DEV.json PREDICTIONS.json [--na-probs NA.json] [--na-prob-thresh 1.0]
    mobilebert score glue TASK DEV.tsv PREDICTIONS.tsv [--on-bad-row error|skip]

SQuAD output is what the official `evaluate-v1.1.py` (`{"exact_match", "f1"}`, one line) or
`evaluate-v2.0.py` (exact, f1, total, HasAns_*, NoAns_*, and best_* with --na-probs; indented)
prints, so anyone can check a result with either tool. GLUE predictions are read in the GLUE
submission format (`index<TAB>prediction`, label strings) and every dev example must have exactly
one prediction. Nothing here needs torch.
"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("score", help="score a predictions file (SQuAD or GLUE) and print the metrics as JSON",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="{squad,glue}")
    sq = sub.add_parser("squad", help="official SQuAD v1.1 / v2.0 EM and F1")
    sq.add_argument("dev", help="SQuAD dev JSON (v1.1 or v2.0)")
    sq.add_argument("predictions", help="predictions JSON: {question id: answer text}")
    sq.add_argument("--na-probs", help="v2.0: JSON {question id: no-answer probability or null-odds}")
    sq.add_argument("--na-prob-thresh", type=float, default=1.0,
                    help="v2.0: predict no-answer when na-prob exceeds this (official default 1.0)")
    sq.add_argument("--version", choices=["auto", "1.1", "2.0"], default="auto",
                    help="scoring rules; auto reads the dev file's version and questions")
    sq.add_argument("--out", help="also write the metrics JSON here")
    sq.set_defaults(func=_run_squad)
    gl = sub.add_parser("glue", help="GLUE metrics for a task's dev file")
    gl.add_argument("task", help="CoLA, SST-2, MRPC, STS-B, QQP, MNLI (-m/-mm), QNLI, RTE or WNLI")
    gl.add_argument("dev", help="the task's labeled dev TSV")
    gl.add_argument("predictions", help="index<TAB>prediction TSV (GLUE submission format)")
    gl.add_argument("--on-bad-row", choices=["error", "skip"], default="error",
                    help="malformed dev rows: stop (default) or count and skip them")
    gl.add_argument("--out", help="also write the metrics JSON here")
    gl.set_defaults(func=_run_glue)


def _run_squad(args) -> int:
    from mobilebert.recipes.score import squad_command

    return squad_command(args.dev, args.predictions, args.na_probs, args.na_prob_thresh, args.version, args.out)


def _run_glue(args) -> int:
    from mobilebert.recipes.score import glue_command

    return glue_command(args.task, args.dev, args.predictions, args.on_bad_row, args.out)
