"""The bookkeeping of benchmarks/kt_study.py: the shared results file, cell claims between processes, the machine
and versions stored with every cell, running a `mobilebert` command in-process, and the latency cell.

Nothing here knows the study's rows or budget; kt_study.py holds those.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ results file
class Results:
    """STATE/results.json: {"mode", "cells": {key: record}}; rewritten atomically after every cell. Several
    processes may share it (two on 2 cores finish the study sooner): every read refreshes from the file and every
    write re-reads, adds its cell and replaces the file under an exclusive lock, so no process drops another's."""

    def __init__(self, path: Path, mode: str):
        self.path, self.mode = path, mode
        self.data = self._read()
        if self.data.get("mode") != mode:
            sys.exit(f"kt_study: {path} holds a {self.data.get('mode')} study; use another --state for {mode}")

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {"mode": self.mode, "cells": {}}

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        with open(self.path.with_name(self.path.name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def __contains__(self, key: str) -> bool:
        self.data["cells"].update(self._read()["cells"])
        return key in self.data["cells"]

    def get(self, key: str) -> dict | None:
        return self.data["cells"].get(key)

    def put(self, key: str, record: dict) -> None:
        with self._locked():
            on_disk = self._read()
            self.data = {**self.data, "cells": {**self.data["cells"], **on_disk["cells"], key: record}}
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)


def _claim_path(folder: Path, key: str) -> Path:
    return folder / (key.replace("/", "__") + ".pid")


def release(folder: Path, key: str) -> None:
    """Give back a claim taken with claim()."""
    _claim_path(folder, key).unlink(missing_ok=True)


def claim(folder: Path, key: str) -> int | None:
    """Claim a cell for this process (STATE/claims/KEY.pid); returns the pid of another live process that holds
    it, else None (a claim left by a dead process is taken over). release() gives it back."""
    folder.mkdir(parents=True, exist_ok=True)
    path = _claim_path(folder, key)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                path.unlink(missing_ok=True)  # its process died: take the cell over
                continue
            except PermissionError:
                return pid
            return None if pid == os.getpid() else pid
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return None


# The variables that cap the vector instructions of torch's three CPU kernel libraries (ATen's own, MKL's GEMMs,
# oneDNN's); CPU float sums depend on them. A record's dispatch is made again on a larger CPU by capping all three
# (session 33: a 2-thread PKT run first made on an AVX2 CPU drifted on an AVX-512 one, and matched its record to the
# last digit with these three set; with any one of them alone it did not, nor without oneDNN's or ATen's).
KERNEL_CAPS = {"AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
               "AVX512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                          "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}}


def cpu_kernels() -> dict:
    """The CPU kernels this process dispatches to: {"isa": torch's capability ("AVX2", "AVX512", ...), "isa_caps":
    the KERNEL_CAPS variables set in its environment}. Read when torch first dispatches, so set before it starts."""
    import torch

    caps = {var: os.environ[var] for var in KERNEL_CAPS["AVX2"] if var in os.environ}
    return {"isa": torch.backends.cpu.get_cpu_capability(), "isa_caps": caps}


def environment() -> dict:
    """Machine and versions, stored with every cell."""
    from importlib.metadata import version

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), cpu)
    versions = {}
    for pkg in ("torch", "transformers", "onnxruntime", "tokenizers"):
        with contextlib.suppress(Exception):
            versions[pkg] = version(pkg)
    try:  # a copy of the tree without git (a lent GPU machine): KT_COMMIT names the commit it was copied from
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    compute = {}
    with contextlib.suppress(Exception):
        import torch

        # the CLI runs in this process: its intra-op threads and CPU kernels, on which CPU float sums depend
        compute = {"threads": torch.get_num_threads(), **cpu_kernels()}
        if torch.cuda.is_available():
            compute["gpu"] = torch.cuda.get_device_name(0)
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2), **compute,
            "python": platform.python_version(), **versions, "commit": commit or os.environ.get("KT_COMMIT", "")}


class CliError(Exception):
    """A `mobilebert` command failed; the message is its one error line."""


def cli(args: list[str]) -> None:
    """`mobilebert ARGS` in this process (the real CLI entry point); raises CliError with its error line."""
    from mobilebert.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    sys.stderr.write(err.getvalue())
    if code in (130, 143):  # 128 + SIGINT/SIGTERM: its last stderr line is then some earlier, unrelated warning
        raise CliError(f"`mobilebert {args[0]}` was stopped by a signal (exit {code}); run the study again to "
                       "continue the cell (from its checkpoint where one was saved; a stop in set-up saves none)")
    if code != 0:
        last = (err.getvalue().strip().splitlines() or ["(no message)"])[-1]
        raise CliError(f"`mobilebert {args[0]}` exited with {code}: {last}")


# ------------------------------------------------------------------------------------------ the latency cell
def bench_cell(teacher: Path, student: Path, runs: int, workdir: Path) -> dict:
    """ONNX Runtime fp32/int8 latency (1 thread, batch 1, seq 128) of the models shaped as the folders' configs,
    with random weights: latency does not depend on them."""
    from mobilebert.checkpoint import load_config
    from mobilebert.presets import PRESETS
    from mobilebert.recipes.bench import run_bench

    configs = {"kt-teacher": load_config(teacher), "kt-student": load_config(student)}
    for name, cfg in configs.items():
        PRESETS[name] = lambda cfg=cfg: cfg.replace(architectures=None)
    seq = 128
    report = run_bench(tuple(configs), ("ort-fp32", "ort-int8"), (seq,), (1,), runs=runs, warmup=min(5, runs),
                       workdir=workdir)
    lat = {f"{r.model[3:]}/{r.runtime}": {"p50_ms": r.p50_ms, "p90_ms": r.p90_ms} for r in report.results}
    return {"seq": seq, "threads": 1, "latency": lat, "machine": report.machine}
