"""Run the knowledge-transfer study (benchmarks/kt_study.py) with many worker processes at once, against a deadline:
the way to use a lent GPU machine (one GPU, 16 cores, minutes of time, no package registry) for the issue-11 study
at ten times the pre-training steps.

One `mobilebert train` step of the 7M-parameter student is a few thousand small kernels, so a GPU spends most of
it waiting for the Python process that launches them; a dozen processes sharing the GPU get through a dozen rows
and fine-tuning cells at once. Each worker is a plain `kt_study.py --only ROW --tasks ...` (cells are claimed and
written to the one results file as each ends, as when two processes share a CPU study):

    1. prep: the corpus prepared once (the study's `data` cell), before any row trains on it;
    2. one pre-training worker per row (`--tasks ''`: pre-training and zero-shot), rows in the order given;
    3. as each row's pre-training ends, one fine-tuning worker per task (its seeds in turn; with --seeds one per
       task and seed), earlier rows first.

At --deadline seconds every worker still running is stopped (its cell is lost; finished cells are kept), and the
results file and the workers' logs are copied to --copy-to. With --gate, a smoke study on the same device runs
first beside the preparation, and a failure there stops everything at once (a broken code path costs seconds, not
the lease).

    python benchmarks/kt_study_pool.py --pack .device     # here: the teacher (fp16-rounded) and data to carry
    python benchmarks/kt_study_pool.py --scale 10 --device cuda --workers 10 --deadline 540 --gate --seeds 1,2,3 \\
        --rows pkt-adamw,bare-adamw,pkt-fmt-adamw,jkt-adamw,akt-adamw --copy-to "$OUT"   # there, with
        # MOBILEBERT_DATA (the unpacked data.tar.xz), MOBILEBERT_MINILM (.device/teacher) and KT_COMMIT set
    python benchmarks/kt_study_pool.py --smoke --state /tmp/pool --rows pkt-adamw,bare-adamw   # seconds, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from kt_study_report import ROWS, TASKS  # noqa: E402
from kt_study_rows import ROW_SETTINGS  # noqa: E402

TASK_ORDER = ("sts-b", "sst-2", "mrpc", "rte")  # longest first: the last cells to start are the short ones


class Job:
    def __init__(self, name: str, args: list[str], logs: Path, after: str | None = None):
        self.name, self.args, self.after = name, args, after  # after: the job that must end well first
        self.log = logs / (name.replace("/", "__") + ".log")
        self.proc, self.rc, self.t0, self.wall = None, None, 0.0, 0.0

    def start(self, env: dict) -> None:
        self.t0 = time.time()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "kt_study.py"), *self.args, "--no-report"],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                     start_new_session=True)

    def poll(self) -> bool:
        """True once the worker has ended (rc set)."""
        if self.proc is not None and self.rc is None and (rc := self.proc.poll()) is not None:
            self.rc, self.wall = rc, time.time() - self.t0
        return self.rc is not None

    def stop(self) -> None:
        if self.proc is not None and self.rc is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def tail(self, n: int = 3) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-n:])


def plan(study: list[str], rows: list[str], tasks: list[str], logs: Path, gate: list[str] | None,
         seeds=(None,)) -> list[Job]:
    """The jobs in the order they may start: fine-tuning one job per row and task, or per row, task and seed
    (seeds given: shorter jobs, so the last row's cells end sooner before a deadline)."""
    jobs = [Job("prep", [*study, "--only", "random", "--tasks", ""], logs)]
    if gate:
        jobs.insert(0, Job("gate", gate, logs))
    jobs += [Job(f"pretrain/{row}", [*study, "--only", row, "--tasks", ""], logs, after="prep") for row in rows]
    jobs += [Job(f"finetune/{row}/{task}" + (f"/{seed}" if seed else ""),
                 [*study, "--only", row, "--tasks", task, *([f"--seeds={seed}"] if seed else [])], logs,
                 after=f"pretrain/{row}")
             for row in rows for task in sorted(tasks, key=TASK_ORDER.index) for seed in seeds]
    return jobs


def pretrain_done(run: Path, kt_steps: int, pd_steps: int) -> float:
    """The share of a pre-training run's cost done, from its metrics.jsonl (every stage's last logged step). A pd
    step counts twice: it runs the whole student and its MLM head (~5,400 kernels), a PKT step ~2,900 on average."""
    last: dict[str, int] = {}
    try:
        for line in (run / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "stage" in rec and "step" in rec:
                last[rec["stage"]] = max(last.get(rec["stage"], 0), int(rec["step"]))
    except (OSError, ValueError):
        return 0.0
    done = sum(n * (2 if stage == "pd" else 1) for stage, n in last.items())
    return min(1.0, done / (kt_steps + 2 * pd_steps))


def run_pool(jobs: list[Job], workers: int, deadline: float, say, copy, progress=None) -> int:
    """Start jobs in order as workers free up and their prerequisite has ended well; stop every worker at the
    deadline (or at once when the gate fails). Returns how many jobs failed, were stopped or never started.

    progress(job) -> share of a pre-training job done. Every 30 s from a minute on, if a
    running pre-training is on course (at its pace over the last 20 s or more) to end within 20 s of the deadline
    or later, the last-listed one running is stopped: rows share the GPU, so the rows listed first finish sooner
    and a row that cannot finish gives its share back; no pre-training starts in the last half of the time."""
    by_name, t0, last_copy, last_shed = {j.name: j for j in jobs}, time.time(), 0.0, 0.0
    paces: dict[str, list[tuple[float, float]]] = {}  # job -> (seconds since t0, share done), every ~5 s
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    while True:
        for j in jobs:
            if j.proc is not None and j.rc is None and j.poll():
                say(f"{j.name}: exit {j.rc} after {j.wall:.0f} s" + (f" ({j.tail()})" if j.rc else ""))
                if j.rc and j.name == "gate":
                    say("gate: the smoke study failed on this device; stopping everything")
                    deadline = 0
        running = [j for j in jobs if j.proc is not None and j.rc is None]
        if time.time() - t0 >= deadline:
            for j in running:
                j.stop()
                say(f"{j.name}: stopped at the deadline after {time.time() - j.t0:.0f} s")
            time.sleep(3)
            break
        now = time.time() - t0
        training = [j for j in running if progress and j.name.startswith("pretrain/")]
        for j in training:  # read each run's metrics once per 5 s, not on every pass of the loop
            seen = paces.setdefault(j.name, [])
            if not seen or now - seen[-1][0] >= 5:
                seen.append((now, progress(j)))
        if training and now > 60 and now - last_shed > 30:
            late = []
            for j in training:
                then = [x for x in paces[j.name] if now - x[0] >= 20 and x[0] >= last_shed]
                if not then:
                    continue
                (t1, d1), (t2, d2) = then[-1], paces[j.name][-1]
                rate = (d2 - d1) / max(t2 - t1, 1e-9)  # share per second at the present contention
                stalled = rate <= 0 and time.time() - j.t0 > 90  # no step logged for a while, past its start-up
                if d2 < 1 and (stalled or rate > 0 and t2 + (1 - d2) / rate > deadline - 20):
                    late.append(f"{j.name} {100 * d2:.0f} %, {100 * rate:.2f} %/s")
            if late:
                shed = training[-1]
                shed.stop()
                shed.rc, last_shed = -15, now
                say(f"{shed.name}: stopped to give its GPU share to the rows before it (late: {'; '.join(late)})")
                running.remove(shed)
        for j in jobs:
            if len(running) >= workers:
                break
            if j.name.startswith("pretrain/") and now > deadline / 2:
                continue
            if j.proc is None and (j.after is None or by_name[j.after].rc == 0):
                j.start(env)
                running.append(j)
                say(f"{j.name}: started")
        if not running:  # nothing left that can start: done, or the rest wait on a job that failed
            break
        if time.time() - last_copy > 20:
            copy()
            last_copy = time.time()
        time.sleep(1)
    copy()
    return sum(1 for j in jobs if j.rc != 0)


def pack(out: Path) -> dict:
    """What a machine without a registry or ../shared needs: the teacher with its weights rounded to fp16 (the fp32
    file, 87 MB, is over the 64 MiB a lent machine's call may carry; the rounding's effect on the teacher's zero-shot
    STS-B is measured here and stored in pack.json) and the study's data (corpus, the four tasks, the vocab)."""
    import tarfile

    import torch
    from safetensors.torch import load_file, save_file

    from kt_study_rows import data_root, minilm_dir

    src, teacher = minilm_dir(), out / "teacher"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, teacher)
    state = load_file(src / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, teacher / "model.safetensors",
              metadata={"format": "pt", "note": "all-MiniLM-L6-v2 rounded to fp16 for transport"})
    root = data_root()
    with tarfile.open(out / "data.tar.xz", "w:xz") as tar:
        tasks = [f"glue/{d}" for d in ("SST-2", "MRPC", "STS-B", "RTE")]
        for part in ["corpus", "bert-base-uncased/vocab.txt", *tasks]:
            tar.add(root / part, arcname=part)
    scores = {name: _teacher_zero_shot(folder, root) for name, folder in (("fp32", src), ("fp16-rounded", teacher))}
    rel = max(float(((v.half().float() - v).norm() / v.norm()).item()) for v in state.values()
              if v.is_floating_point() and v.norm() > 0)  # an all-zero tensor (a fresh bias) rounds exactly
    record = {"teacher_zero_shot_sts_b": scores, "max_relative_weight_error": rel,
              "bytes": {p.name: p.stat().st_size for p in (teacher / "model.safetensors", out / "data.tar.xz")},
              "torch": torch.__version__}
    (out / "pack.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _teacher_zero_shot(folder: Path, root: Path) -> float:
    from mobilebert.checkpoint import load_pretrained
    from mobilebert.model import MobileBertModel
    from mobilebert.tasks.zeroshot import zero_shot_sts
    from mobilebert.tokenizer import Tokenizer

    model = load_pretrained(MobileBertModel, folder)
    return zero_shot_sts(model, Tokenizer.from_file(folder), root / "glue" / "STS-B" / "dev.tsv")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", metavar="DIR", help="only write DIR/teacher, DIR/data.tar.xz and DIR/pack.json")
    p.add_argument("--rows", default="pkt-adamw,bare-adamw", help="rows to pre-train and fine-tune, in priority order")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--state", help="kt_study.py --state (smoke: required)")
    p.add_argument("--workers", type=int, default=2, help="processes at once")
    p.add_argument("--deadline", type=float, default=float("inf"), help="seconds; then every worker is stopped")
    p.add_argument("--seeds", help="fine-tuning seeds, one job each (comma-separated; default: one job per task "
                                   "runs all the budget's seeds)")
    p.add_argument("--gate", action="store_true", help="a smoke study on --device first; its failure stops all")
    p.add_argument("--copy-to", help="folder that receives the results file and the workers' logs (every 20 s)")
    args = p.parse_args()
    if args.pack:
        print(json.dumps(pack(Path(args.pack)), indent=1))
        return 0
    rows, tasks = [r for r in args.rows.split(",") if r], [t for t in args.tasks.split(",") if t]
    for bad in [r for r in rows if r not in ROWS[2:]] + [t for t in tasks if t not in TASKS]:
        p.error(f"{bad!r} is not a pre-trained row ({', '.join(ROWS[2:])}) or a task ({', '.join(TASKS)})")
    if args.smoke and not args.state:
        p.error("--smoke needs --state (a folder of its own)")
    study = [f"--scale={args.scale}", f"--device={args.device}", *(["--smoke"] if args.smoke else []),
             *([f"--state={args.state}"] if args.state else [])]
    name = "kt-study" + (f"-x{args.scale}" if args.scale != 1 else "")
    state = Path(args.state) if args.state else REPO / "runs" / name
    results = state / "results.json" if args.state else REPO / "docs" / f"{name}.json"
    logs = state / "pool-logs"
    logs.mkdir(parents=True, exist_ok=True)
    gate = None
    if args.gate:
        gate = ["--smoke", f"--device={args.device}", f"--state={state}-gate", "--tasks=sts-b",
                *(a for r in rows[:2] for a in ("--only", r))]
    t0 = time.time()
    pool_log = logs / "pool.log"

    def say(msg: str) -> None:
        line = f"[{time.time() - t0:6.0f} s] {msg}"
        print(line, flush=True)
        with open(pool_log, "a") as f:
            f.write(line + "\n")

    def copy() -> None:
        if not args.copy_to:
            return
        dest = Path(args.copy_to)
        dest.mkdir(parents=True, exist_ok=True)
        if results.is_file():
            shutil.copy(results, dest / results.name)
        for run in sorted((state / "pretrain").glob("*")):  # each row's loss curve and summary, when written
            for f in ("summary.json", "metrics.jsonl"):
                if (run / f).is_file():
                    shutil.copy(run / f, logs / f"{run.name}.{f}")
        shutil.make_archive(str(dest / "pool-logs"), "gztar", logs)

    def progress(job: Job) -> float:
        """Share of a pre-training job done (run_pool calls it for pre-training jobs only)."""
        if not results.is_file():
            return 0.0
        b = json.loads(results.read_text())["budget"]  # written by the first worker
        final = ROW_SETTINGS[job.name.split("/", 1)[1]][1]
        kt = int(b["steps"] * b["kt_share"]) if final else b["steps"]
        return pretrain_done(state / job.name, kt, b["steps"] - kt)

    try:
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [None]
    except ValueError:
        p.error(f"--seeds: {args.seeds!r} is not a comma-separated list of whole numbers")
    failed = run_pool(plan(study, rows, tasks, logs, gate, seeds), args.workers, args.deadline, say, copy, progress)
    say(f"done: {failed} job(s) failed, stopped or never started")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
