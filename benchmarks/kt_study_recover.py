"""What benchmarks/kt_study.py does when a study's results file outlives its run folder (a new checkout keeps
docs/kt-study.json, not runs/): the prepared corpus and a finished row's pre-training are made again for the cells
still to run, and checked against what the results file recorded, so that no cell scores another model.

`self` is the kt_study.Study whose folder lost them (its state, results, shards and pretrain()).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from pathlib import Path

from kt_study_cells import KERNEL_CAPS, CliError, claim, cpu_kernels, release


def prepare_again(self, out: Path, prepare, record: dict) -> None:
    """A finished study in a new checkout keeps its results file but not its run folder: prepare the same corpus
    again (deterministic) for the rows still to run, and refuse a corpus that no longer matches the record."""
    claims, manifest = self.state / "claims", out / "manifest.json"  # the manifest is written last
    while (other := claim(claims, "data-again")) is not None:  # another live process is preparing it: wait;
        if manifest.is_file():                                   # should it die, its claim passes to us
            return
        print(f"--- data: prepared again by process {other}, waiting", flush=True)
        time.sleep(5)
    try:
        if manifest.is_file():  # prepared by another process between our check and our claim
            return
        print("--- data: the prepared corpus is gone; preparing it again", flush=True)
        got = prepare()
    finally:
        release(claims, "data-again")
    if got.get("tokens") != record.get("tokens"):
        shutil.rmtree(out)  # no row may train on it
        raise CliError(f"{self.corpus}: prepared again it holds {got.get('tokens'):,} tokens, the study's 'data' "
                       f"cell {record.get('tokens'):,}; the corpus changed: give a new --state for a new study")


@contextlib.contextmanager
def recorded_threads(threads: int | None):
    """Run the block on the record's intra-op thread count. CPU float sums are the same from run to run only at
    the same count (a 1-thread and a 2-thread run of configs/tiny-test.yaml differ in the 8th digit of the gradient
    norm by step 5, and such differences grow over a long run); None (a record from before 2026-12-06): as this
    process is. Yields the count in effect."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def check_kernels(row: str, env: dict) -> None:
    """Refuse, before the run, to pre-train a row again on other CPU kernels than its record's: the re-run would be
    another model (an AVX2 first run drifted on AVX-512 from its first transfer stage's first logged loss). A run
    without caps dispatches as if capped at its CPU's own ISA, so an AVX2 CPU's record is made again on an AVX-512
    CPU by capping it at AVX2. A record from before 2026-12-07 names no ISA: nothing to check."""
    if not env.get("isa"):
        return
    here = cpu_kernels()
    dispatch = lambda e: e.get("isa_caps") or KERNEL_CAPS.get(e["isa"])  # noqa: E731
    want = dispatch(env)
    if env["isa"] == here["isa"] and want == dispatch(here):
        return
    first = env["isa"] + (f" (capped by {_assignments(env['isa_caps'])})" if env.get("isa_caps") else "")
    if here["isa_caps"]:  # capped as the record was, yet at another ISA: this CPU has not the record's
        beyond = here["isa_caps"] == want
    else:  # uncapped, a process runs at its CPU's highest of torch's x86 capabilities
        order = ("DEFAULT", "AVX2", "AVX512")
        beyond = env["isa"] not in order or here["isa"] not in order or \
            order.index(env["isa"]) > order.index(here["isa"])
    if want and not beyond:
        raise CliError(f"pretrain/{row}: its run folder is gone and its record ran the CPU kernels at {first}, this "
                       f"process at {here['isa']}; CPU sums depend on them: run again with {_assignments(want)} set, "
                       f"or the re-run is another model, set aside after it has run")
    raise CliError(f"pretrain/{row}: its run folder is gone and its record ran the CPU kernels at {first}; this CPU "
                   f"runs them at {here['isa']} at most, so the first run's model cannot be made again here: run it "
                   f"on a CPU with {env['isa']}, or give a new --state")


def _assignments(caps: dict) -> str:
    return " ".join(f"{var}={value}" for var, value in caps.items())


def pretrain_again(self, row: str, out: Path, record: dict) -> bool:
    """A finished row in a new checkout keeps its record but not its run folder: pre-train it again for the cells
    still to run (same settings, seed, machine, versions and thread count) and check it against the record, its
    tokens (unless the re-run itself was resumed) and held-out MLM loss; a run that differs is set aside (ROW.differs)
    and stops the study. False while another process does it. On one thread the re-run has been the same model
    (session 31, bare-adamw). A 2-thread re-run of pkt-adamw-s1 on an AVX-512 CPU was not (session 32: 8th-digit
    drift from pkt-1's first logged loss, MLM 4.595 against 4.627); its record had run on an AVX2 CPU, and capped at
    AVX2 (check_kernels) the re-run matched it to the last digit (session 33)."""
    env = record.get("env", {})
    threads = env.get("threads")
    if not threads and not os.environ.get("OMP_NUM_THREADS"):  # refuse before the run, not after it
        rate = (record.get("stages") or [{}])[0].get("tokens_per_s")
        raise CliError(f"pretrain/{row}: its run folder is gone and its record names no thread count, on which CPU "
                       f"sums depend: set OMP_NUM_THREADS to the first run's (it ran at "
                       f"{f'{rate:,.0f}' if rate else '?'} tokens/s, load average {env.get('load_average', '?')}) "
                       f"and run again; on another count the re-run is another model, set aside after it has run")
    check_kernels(row, env)
    claims, key = self.state / "claims", f"pretrain-again/{row}"
    if (other := claim(claims, key)) is not None:
        print(f"--- pretrain/{row}: pre-trained again by process {other}, skipped here", flush=True)
        return False
    try:
        with recorded_threads(threads) as running:
            print(f"--- pretrain/{row}: its run folder is gone; pre-training it again on {running} thread(s), "
                  + ("as the record was" if threads else "as OMP_NUM_THREADS says (the record names none)"), flush=True)
            got = self.pretrain(row, out)
    finally:
        release(claims, key)
    loss = lambda r: r["eval"]["student"]["mlm_loss"]
    same_tokens = got["resumed"] or got["tokens"] == record["tokens"]
    if same_tokens and math.isclose(loss(got), loss(record), rel_tol=1e-3):
        return True
    aside = out.with_name(row + ".differs")
    shutil.rmtree(aside, ignore_errors=True)
    out.rename(aside)
    raise CliError(f"pretrain/{row}: pre-trained again it saw {got['tokens']:,} tokens and reached MLM loss "
                   f"{loss(got):.4f}, the study's record {record['tokens']:,} and {loss(record):.4f}; the cells "
                   f"still to run would score another model: set aside in {aside}"
                   + ("" if threads else f" (the record names no thread count; this re-run used OMP_NUM_THREADS="
                      f"{os.environ.get('OMP_NUM_THREADS')})")
                   + ("" if env.get("isa") else f" (the record names no CPU kernel ISA; this re-run ran at "
                      f"{cpu_kernels()['isa']}, and a first run on another CPU, AVX2 against AVX-512, is another "
                      "model)"))
