"""THE training loop shared by every job (teacher pre-training, KT stages, PD, GLUE/SQuAD fine-tuning).

A job supplies a model, a `LossStep` (below) and a batch source; the loop does the rest in nanoGPT's
order: micro-steps (gradient accumulation, DDP `no_sync` on all but the last, autocast for the forward
only) -> global-norm clip -> optimizer and scheduler step -> log -> eval -> checkpoint.

The loop calls every loss one way (the `LossStep` protocol): `loss_fn.denominators(micro_batch)` for each
micro-batch of the step, then `loss_fn(model, micro_batch, totals) -> (loss, logs)`. Two normalisations:
  * global-normalised: `denominators(batch) -> dict[str, float]` gives the counts the loss divides by
    (e.g. the number of masked tokens and of sequences in a micro-batch); the loop sums them over the
    step's micro-batches and all ranks into `totals`, and the loss divides its *sums* by them, so the
    accumulated gradient equals the one of a single big batch exactly, for any accumulation or world size
    (MLM positions vary per sequence; this is why it exists). The distill/steps.py stage losses.
  * mean: `denominators` returns {} (and `totals` is {}): `loss` is the mean over the micro-batch; the loop
    backpropagates `loss / grad_accum` and DDP averages over ranks. Exact when every micro-batch has the
    same number of loss items. The fine-tuning losses (recipes/finetune.py); `MeanLoss(fn)` adapts a plain
    `fn(model, batch) -> (loss, logs)`.
Logged values are averaged over the steps since the last log (and over ranks), and the window sums are
part of `loop_state`, which `checkpoint_fn` receives and `train_loop(loop_state=...)` accepts, so a
resumed run logs the same numbers as an uninterrupted one.

SIGTERM/SIGINT set a flag; the loop finishes the current step, calls `checkpoint_fn`, and returns with
`summary["interrupted"] = signum` (a second SIGINT, or a signal before the first step has finished, raises
KeyboardInterrupt at once: there is nothing new to save then).

API:
    LoopConfig(max_steps, grad_accum=1, clip_grad_norm=1.0, log_every=10, eval_every=0, save_every=0,
               precision="fp32", stage="", progress=True, save_at_end=True, tokens_per_batch=None)
    LossStep (protocol): denominators(batch) -> dict[str, float]; __call__(model, batch, totals) -> (loss, logs)
    MeanLoss(fn): a LossStep for a mean loss `fn(model, batch) -> (loss, logs)`
    train_loop(model, loss_fn, batches, optimizer, scheduler, cfg, *, logger=None, start_step=0,
               on_step_end=None, eval_fn=None, checkpoint_fn=None, desc="", loop_state=None) -> dict
        batches: callable `step -> batch` (a dict is split into grad_accum micro-batches along dim 0; a
                 list is taken as the micro-batches) or an iterator yielding micro-batches.
        checkpoint_fn(step, loop_state) is called every save_every steps, on interrupt, and at the end.
        eval_fn(step) -> dict of metrics, logged as `eval_<name>`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from tqdm.auto import tqdm

from mobilebert.engine import distributed as D
from mobilebert.errors import ConfigError, UserError

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class LoopConfig:
    max_steps: int
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0     # global-norm clipping (GR: 1.0); None or 0 disables
    log_every: int = 10
    eval_every: int = 0
    save_every: int = 0
    precision: str = "fp32"                # bf16 autocast on GPU (and CPU if asked); fp16 uses a GradScaler
    stage: str = ""                        # name written into every metrics record
    progress: bool = True                  # tqdm bar on rank 0
    save_at_end: bool = True               # call checkpoint_fn after the last step
    tokens_per_batch: Callable[[dict], int] | None = None  # default: attention_mask.sum() (or input_ids.numel())


class LossStep(Protocol):
    """What `train_loop` calls each micro-step (the module docstring gives the two normalisations)."""

    def denominators(self, batch: dict) -> dict[str, float]:
        """The counts this micro-batch adds to the step's normalisers, read on the host copy (no device
        sync); {} for a loss that is a mean over its micro-batch."""
        ...

    def __call__(self, model, batch: dict, totals: dict[str, float]) -> tuple[torch.Tensor, dict]:
        """(loss, logs) of one micro-batch; `totals`: the step's summed denominators ({} for a mean loss)."""
        ...


class MeanLoss:
    """A `LossStep` for a loss that is already the mean over its micro-batch: `fn(model, batch) -> (loss, logs)`."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def denominators(self, batch: dict) -> dict[str, float]:
        return {}

    def __call__(self, model, batch: dict, totals: dict[str, float]) -> tuple[torch.Tensor, dict]:
        return self.fn(model, batch)


class _StopFlag:
    """Set by SIGTERM/SIGINT; polled at the end of every step."""

    def __init__(self):
        self.signum: int | None = None
        self.armed = False  # set once a step has finished: before that there is nothing new to save
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if not self.armed or (self.signum == signal.SIGINT and signum == signal.SIGINT):
            raise KeyboardInterrupt  # first step (a huge one may never end) or second Ctrl-C: stop now
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def _split(batch: dict, n: int) -> list[dict]:
    """Split a batch dict into n equal micro-batches along dim 0."""
    size = next(v.shape[0] for v in batch.values() if torch.is_tensor(v))
    if size % n:
        raise ConfigError(f"batch size {size} is not divisible by grad_accum={n}")
    k = size // n
    return [{key: (v[i * k:(i + 1) * k] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == size else v)
             for key, v in batch.items()} for i in range(n)]


def _micro_batches(batches, step: int, n: int) -> list[dict] | None:
    if callable(batches):
        b = batches(step)
        return list(b) if isinstance(b, (list, tuple)) else (_split(b, n) if n > 1 else [b])
    out = []
    for _ in range(n):
        try:
            out.append(next(batches))
        except StopIteration:
            return None
    return out


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _default_tokens(batch: dict) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel()) if "input_ids" in batch else 0


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_loop(model, loss_fn: LossStep, batches, optimizer, scheduler, cfg: LoopConfig, *, logger=None,
               start_step: int = 0, on_step_end=None, eval_fn=None, checkpoint_fn=None, desc: str = "",
               loop_state: dict | None = None) -> dict:
    """Run steps `start_step .. cfg.max_steps-1`; see the module docstring. Returns a summary dict."""
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision: {cfg.precision!r} is not one of {', '.join(PRECISIONS)}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device = params[0].device if params else torch.device("cpu")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision: fp16 needs a GPU; use bf16 or fp32 on CPU")
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    count_tokens = cfg.tokens_per_batch or _default_tokens
    world = D.world_size()

    # Log-window accumulators (float64 on the device: no host sync per step).
    state = dict(loop_state or {})
    win: dict[str, torch.Tensor] = {k: torch.tensor(v, dtype=torch.float64, device=device)
                                    for k, v in state.get("window", {}).items()}
    win_steps = int(state.get("window_steps", 0))
    win_tokens = int(state.get("window_tokens", 0))
    last_logged: dict[str, float] = dict(state.get("last_logged", {}))
    total_tokens, t_start, t_win = 0, time.perf_counter(), time.perf_counter()
    interrupted = None
    step = start_step

    def current_state() -> dict:
        return {"window": {k: float(v) for k, v in win.items()}, "window_steps": win_steps,
                "window_tokens": win_tokens, "last_logged": dict(last_logged)}

    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=desc or cfg.stage, dynamic_ncols=True,
               disable=not (cfg.progress and D.is_main()), mininterval=1.0)
    with _StopFlag() as stop:
        while step < cfg.max_steps:
            micro = _micro_batches(batches, step, cfg.grad_accum)
            if micro is None:
                break  # iterator exhausted
            step_tokens = sum(count_tokens(b) for b in micro) * world
            dens = [loss_fn.denominators(b) for b in micro]  # on the host copy: no device sync
            normalized, totals = bool(dens[0]), {}
            if normalized:
                keys = sorted(dens[0])
                vec = torch.tensor([sum(float(d[k]) for d in dens) for k in keys], dtype=torch.float64, device=device)
                D.all_reduce_sum(vec)
                totals = {k: float(v) for k, v in zip(keys, vec.tolist())}
            micro = [_to(b, device) for b in micro]
            step_logs: dict[str, torch.Tensor] = {}
            for i, b in enumerate(micro):
                with D.no_sync(model, enabled=i < len(micro) - 1):
                    with _autocast(device, cfg.precision):
                        loss, logs = loss_fn(model, b, totals)
                    # normalised: per-rank shares sum to the global mean; DDP divides by world, undo it.
                    scaled = loss * world if normalized else loss / len(micro)
                    (scaler.scale(scaled) if scaler else scaled).backward()
                w = 1.0 if normalized else 1.0 / len(micro)
                for k, v in {"loss": loss, **logs}.items():
                    v = v.detach().to(device=device, dtype=torch.float64) if torch.is_tensor(v) else \
                        torch.tensor(float(v), dtype=torch.float64, device=device)
                    step_logs[k] = step_logs.get(k, 0.0) + v * w
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.clip_grad_norm:
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
                # device=: with no gradient at all clip_grad_norm_ returns a CPU zero, which must join the window
                norm = norm.detach().to(device=device, dtype=torch.float64)
                step_logs["grad_norm"] = norm / (world if normalized else 1)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            stop.armed = True
            for k, v in step_logs.items():
                win[k] = win.get(k, 0.0) + v
            win_steps += 1
            win_tokens += step_tokens
            total_tokens += step_tokens
            bar.update(1)

            if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.max_steps):
                keys = sorted(win)
                vec = torch.stack([win[k] for k in keys])
                D.all_reduce_sum(vec)
                # normalised sums are already global; mean-mode values are averaged over ranks
                vals = (vec / (win_steps * (1 if normalized else world))).tolist()
                rec = dict(zip(keys, vals))
                if not math.isfinite(rec["loss"]):
                    raise UserError(f"{cfg.stage or 'training'}: loss is {rec['loss']} at step {step}; "
                                    "lower optim.lr or use precision=fp32")
                now = time.perf_counter()
                rec["tokens_per_s"] = win_tokens / max(now - t_win, 1e-9)
                rec["lr"] = max(g["lr"] for g in optimizer.param_groups)
                if logger is not None:
                    logger.log(cfg.stage, step, rec)
                last_logged = {k: v for k, v in rec.items()}
                post = {k: f"{v:.4g}" for k, v in rec.items() if k not in ("grad_norm", "lr", "tokens_per_s")}
                post["tok/s"] = f"{rec['tokens_per_s']:.0f}"
                bar.set_postfix(post, refresh=False)
                win, win_steps, win_tokens, t_win = {}, 0, 0, now
            if on_step_end is not None:
                on_step_end(step)
            t_pause = time.perf_counter()  # evaluation and checkpoints do not count against tokens/s
            if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0:
                was_training = model.training
                metrics = eval_fn(step)
                model.train(was_training)
                if logger is not None and metrics:
                    logger.log(cfg.stage, step, {f"eval_{k}": v for k, v in metrics.items()})
            # Agree on stopping across ranks so every rank takes part in the checkpoint.
            stopping = stop.signum is not None
            if world > 1:
                flag = torch.tensor([1.0 if stopping else 0.0], device=device)
                stopping = D.all_reduce_max(flag).item() > 0
            if stopping:
                interrupted = stop.signum or signal.SIGTERM
                if checkpoint_fn is not None:
                    checkpoint_fn(step, current_state())
                break
            if checkpoint_fn is not None and step < cfg.max_steps and cfg.save_every and step % cfg.save_every == 0:
                checkpoint_fn(step, current_state())
            t_win += time.perf_counter() - t_pause
        if interrupted is None and checkpoint_fn is not None and cfg.save_at_end and step > start_step:
            checkpoint_fn(step, current_state())
    bar.close()
    seconds = time.perf_counter() - t_start
    return {"stage": cfg.stage, "start_step": start_step, "end_step": step, "steps_run": step - start_step,
            "last": last_logged, "loss": last_logged.get("loss"), "tokens": total_tokens, "seconds": seconds,
            "tokens_per_s": total_tokens / max(seconds, 1e-9), "interrupted": interrupted,
            "finished": step >= cfg.max_steps and interrupted is None}
