"""Latency and size benchmark: MobileBERT beside BERT_BASE in the same runtimes (paper Tables 4 and 7).

The paper reports MobileBERT at 62 ms on a Pixel 4 (TFLite, 4 threads, seq 128, batch 1; Table 7) and
BERT_BASE as 4.3x larger and 5.5x slower (Table 4: 25.3M vs 109M parameters, 62 vs 342 ms). We cannot
run on a Pixel 4, so `mobilebert bench` measures the same ratios on this host: batch 1, p50 and p90 over
`runs` timed calls after `warmup` untimed ones, per sequence length and thread count, in PyTorch eager,
torch.compile, PyTorch dynamic int8, ONNX Runtime fp32 and int8 (dynamic), and ExecuTorch (XNNPACK,
the mobile runtime here) fp32 and int8; plus every artifact's size on disk. Ratios (BERT_BASE /
MobileBERT) are computed from the same run. Weights are random: latency does not depend on them.
Every exported artifact passes the same PyTorch parity check as `mobilebert export` before it is timed.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mobilebert.atomic import write_text
from mobilebert.errors import UserError
from mobilebert.recipes.bench_report import PAPER, BenchReport, Result, markdown_table, plot

RUNTIMES = ("torch-eager", "torch-compile", "torch-int8", "ort-fp32", "ort-int8", "executorch-fp32",
            "executorch-int8")


def machine_info() -> dict:
    import onnxruntime

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}
    try:
        from importlib.metadata import version

        info["executorch"] = version("executorch")
    except Exception:
        info["executorch"] = None
    try:
        info["load_average"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def time_calls(fn, runs: int, warmup: int) -> tuple[float, float, float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    t = np.array(times)
    return float(np.percentile(t, 50)), float(np.percentile(t, 90)), float(t.mean()), float(t.min())


def time_interleaved(fns: dict, rounds: int, warmup: int = 3) -> dict[str, float]:
    """p50 in ms of each zero-argument callable, timed one call of each per round, so that machine noise hits
    all alike (for comparing variants in one process; `run_bench` times settings one after another)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: float(np.median(v)) for k, v in times.items()}


def _inputs(cfg, seq: int):
    g = torch.Generator().manual_seed(seq)
    ids = torch.randint(999, cfg.vocab_size, (1, seq), generator=g)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


class ModelArtifacts:
    """One model's PyTorch module and exported files, built once and reused across the grid."""

    def __init__(self, preset: str, workdir: Path, runtimes, max_seq: int, log=print, fold_nonorm: bool = True):
        from mobilebert.export.wrapper import ExportWrapper
        from mobilebert.heads import MobileBertForSequenceClassification
        from mobilebert.presets import get_config
        from mobilebert.export.fold import fold_nonorm as fold

        self.preset, self.log = preset, log
        torch.manual_seed(0)
        plain = MobileBertForSequenceClassification(get_config(preset)).eval()
        # NoNorm folded into the adjacent linears (paper §3.4: why NoNorm replaces LayerNorm); a no-op for
        # LayerNorm models such as BERT_BASE. Exact up to rounding (tests/export/test_export.py checks it).
        self.model, self.folded = fold(plain) if fold_nonorm else (plain, 0)
        # The ONNX graphs go further where folding is on: residual NoNorms carried, shared-input linears
        # merged (mobilebert.export.fuse; BERT_BASE gets the merged Q/K/V). The parity check compares them
        # with `plain`.
        self.plain, self.fuse = plain, fold_nonorm
        self.dir = workdir / (preset + ("-folded" if self.folded else ""))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.wrapper = ExportWrapper(self.model).eval()
        self.sizes: dict[str, int] = {}
        plain.save_pretrained(self.dir / "checkpoint")
        self.sizes["safetensors fp32"] = (self.dir / "checkpoint" / "model.safetensors").stat().st_size
        self.paths: dict[str, Path] = {}
        if any(r.startswith("ort") for r in runtimes):
            self._onnx()
        if "executorch-fp32" in runtimes:
            self._pte("executorch-fp32", False, max_seq)
        if "executorch-int8" in runtimes:
            self._pte("executorch-int8", True, max_seq)

    def _onnx(self):
        from mobilebert.export.onnx import export_onnx
        from mobilebert.quant.ort import quantize_onnx_dynamic

        tag = ".fused" if self.fuse else ""
        fp32, int8 = self.dir / f"model{tag}.onnx", self.dir / f"model{tag}.int8.onnx"
        if not fp32.is_file():
            self.log(f"[{self.preset}] exporting ONNX fp32{' (fused graph)' if self.fuse else ''}")
            export_onnx(self.plain, fp32, fuse=self.fuse)
        if not int8.is_file():
            quantize_onnx_dynamic(fp32, int8)
        self.paths.update({"ort-fp32": fp32, "ort-int8": int8})
        self.sizes.update({"onnx fp32": fp32.stat().st_size, "onnx int8": int8.stat().st_size})

    def _pte(self, name: str, int8: bool, max_seq: int):
        from mobilebert.export.mobile import export_executorch

        path = self.dir / f"model{'.fused' if self.fuse else ''}{'.int8' if int8 else ''}.{max_seq}.pte"
        if not path.is_file():
            self.log(f"[{self.preset}] exporting ExecuTorch {'int8' if int8 else 'fp32'} (max seq {max_seq}); "
                     "this takes minutes")
            t = time.time()
            export_executorch(self.plain, path, max_seq=max_seq, int8=int8, max_batch=4,  # batch 1 is timed
                              fuse=self.fuse)
            self.log(f"[{self.preset}]   done in {time.time() - t:.0f} s")
        self.paths[name] = path
        self.sizes[f"pte {'int8' if int8 else 'fp32'}"] = path.stat().st_size

    @functools.cached_property
    def fast_wrapper(self):
        """What eager and torch.compile run: the fused layers where folding is on (torch-int8 keeps `wrapper`,
        whose nn.Linear modules `quantize_dynamic` needs). Built on first use."""
        from mobilebert.export.fuse import fuse_for_inference
        from mobilebert.export.wrapper import ExportWrapper

        return ExportWrapper(fuse_for_inference(self.plain), token_major=True).eval() if self.fuse else self.wrapper

    def runner(self, runtime: str, seq: int, threads: int):
        """A zero-argument callable running one batch-1 forward of length `seq` on `threads` threads."""
        ids, mask, types = _inputs(self.model.config, seq)
        torch.set_num_threads(threads)
        if runtime in ("torch-eager", "torch-compile", "torch-int8"):
            module = self.fast_wrapper
            if runtime == "torch-int8":
                from mobilebert.export.wrapper import ExportWrapper
                from mobilebert.quant.pytorch import quantize_torch_dynamic

                if not hasattr(self, "_int8"):
                    self._int8 = ExportWrapper(quantize_torch_dynamic(self.model))
                module = self._int8
            elif runtime == "torch-compile":
                if not hasattr(self, "_compiled"):
                    self._compiled = torch.compile(self.fast_wrapper, dynamic=False)
                module = self._compiled

            def run():
                with torch.inference_mode():
                    module(ids, mask, types)
            return run
        if runtime.startswith("ort"):
            from mobilebert.export.runtime import OrtSession

            session = OrtSession(self.paths[runtime], threads=threads)
            a, b, c = ids.numpy(), mask.numpy(), types.numpy()
            return lambda: session(a, b, c)
        if runtime.startswith("executorch"):
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            from mobilebert.export.runtime import ExecuTorchSession

            _unsafe_reset_threadpool(threads)
            session = ExecuTorchSession(self.paths[runtime])
            a, b, c = ids.numpy(), mask.numpy(), types.numpy()
            return lambda: session(a, b, c)
        raise UserError(f"--runtimes: unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")


def bench(models, runtimes, seqs, threads, runs: int, warmup: int, out, fold_nonorm: bool = True) -> int:
    """The `mobilebert bench` job: check the options, time every setting, write and print the table."""
    from mobilebert.presets import PRESETS

    for m in models:
        if m not in PRESETS:
            raise UserError(f"--models: unknown preset {m!r}; choose from {', '.join(PRESETS)}")
    for s in seqs:
        if s < 3 or s > 512:
            raise UserError(f"--seqs: {s} is outside 3..512 (the models' max_position_embeddings)")
    if not threads or min(threads) < 1:
        raise UserError("--threads: give positive thread counts")
    runtimes = runtimes if runtimes is not None else default_runtimes()
    report = run_bench(models, runtimes, seqs, threads, runs, warmup, workdir=out, fold_nonorm=fold_nonorm)
    paths = save_report(report, out)
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def default_runtimes() -> tuple[str, ...]:
    """Every runtime, less the ExecuTorch ones when `executorch` is not installed (an optional extra)."""
    try:
        import executorch  # noqa: F401
    except ImportError:
        print("executorch is not installed (pip install 'mobilebert[mobile]'): timing the other runtimes")
        return tuple(r for r in RUNTIMES if not r.startswith("executorch"))
    return RUNTIMES


def run_bench(models=("mobilebert", "bert-base"), runtimes=RUNTIMES, seqs=(128, 384), threads=(1, 2),
              runs: int = 30, warmup: int = 5, workdir="runs/bench", log=print,
              fold_nonorm: bool = True) -> BenchReport:
    for r in runtimes:
        if r not in RUNTIMES:
            raise UserError(f"--runtimes: unknown runtime {r!r}; choose from {', '.join(RUNTIMES)}")
    if runs < 1 or warmup < 0:
        raise UserError("--runs must be >= 1 and --warmup >= 0")
    if any(r.startswith("executorch") for r in runtimes):
        try:
            import executorch  # noqa: F401
        except ImportError:
            raise UserError("--runtimes executorch-*: needs the `executorch` package (pip install executorch)") from None
    report = BenchReport(machine=machine_info())
    cores = os.cpu_count() or 1
    if max(threads) > cores:
        report.notes.append(f"thread counts above the {cores} cores of this machine were skipped")
        threads = tuple(t for t in threads if t <= cores)
    workdir = Path(workdir)
    saved_threads = torch.get_num_threads()
    try:
        arts = {preset: ModelArtifacts(preset, workdir, runtimes, max(seqs), log, fold_nonorm) for preset in models}
        report.machine["nonorm_folded"] = {preset: art.folded for preset, art in arts.items()}
        report.sizes = {preset: art.sizes for preset, art in arts.items()}
        # Models interleaved per setting: on a shared machine both see the same load, so ratios hold.
        for runtime in runtimes:
            for seq in seqs:
                for t in threads:
                    for preset, art in arts.items():
                        # Free the previous setting's session first. An ONNX Runtime session left to the cycle
                        # collector keeps its thread pool, and a 2-thread session created beside it ran at the
                        # 1-thread speed (`bench --threads 2,1,2`, MobileBERT ort-fp32 seq 128: 34.4, 55.2, 56.7
                        # ms before this; 34.1, 54.7, 33.8 ms with it).
                        fn = None
                        gc.collect()
                        fn = art.runner(runtime, seq, t)
                        p50, p90, mean, lo = time_calls(fn, runs, warmup)
                        report.results.append(Result(preset, runtime, seq, t, p50, p90, mean, lo, runs))
                        log(f"[{preset}] {runtime:16s} seq {seq:4d} threads {t}: p50 {p50:8.1f} ms  p90 {p90:8.1f} ms")
    finally:
        torch.set_num_threads(saved_threads)
    report.machine["load_average_end"] = os.getloadavg()[0]
    return report


def save_report(report: BenchReport, out_dir) -> dict[str, Path]:
    """results.json, table.md and latency.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "table.md", "chart": out / "latency.png"}
    write_text(paths["json"], json.dumps({"machine": report.machine, "results": [asdict(r) for r in report.results],
                                          "sizes": report.sizes, "notes": report.notes, "paper": PAPER}, indent=2) + "\n")
    write_text(paths["markdown"], markdown_table(report) + "\n")
    plot(report, paths["chart"])
    return paths
