"""The one thin module over `torch.distributed` (data parallelism for every training job).

Launch with torchrun (`torchrun --nproc_per_node 8 -m mobilebert train CONFIG.yaml`, multi-node with
`--nnodes/--node_rank/--rdzv_endpoint`). `init()` reads RANK, WORLD_SIZE and LOCAL_RANK from the
environment torchrun sets, picks NCCL on CUDA and gloo on CPU, and returns the device this process
should use. Without those variables everything here degrades to single-process no-ops, so recipes
call the same functions either way and never import `torch.distributed` themselves.

API:
    init(device=None) -> torch.device     rank() / world_size() / is_main()
    barrier()      all_reduce_sum(t)     all_reduce_max(t)
    wrap_ddp(model) -> model               unwrap(model) -> model     no_sync(model, enabled)
    cleanup()
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

_DEVICE: torch.device | None = None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(device: str | None = None) -> torch.device:
    """Join the process group if torchrun started us; return this process's device.

    Args:
        device: "cpu", "cuda" or None (CUDA when available). With CUDA each process takes
            `cuda:LOCAL_RANK`.
    """
    global _DEVICE
    use_cuda = torch.cuda.is_available() if device in (None, "auto") else device.startswith("cuda")
    if use_cuda:
        _DEVICE = torch.device("cuda", _env_int("LOCAL_RANK", 0))
        torch.cuda.set_device(_DEVICE)
    else:
        _DEVICE = torch.device("cpu")
    if _env_int("WORLD_SIZE", 1) > 1 and not is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return _DEVICE


def device() -> torch.device:
    return _DEVICE if _DEVICE is not None else torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0 logs, prints and writes checkpoints."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (returns the tensor for chaining)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def wrap_ddp(model: nn.Module) -> nn.Module:
    """DistributedDataParallel when world_size > 1, else the model itself.

    Only parameters with `requires_grad=True` are synchronised, so freeze (PKT) before wrapping.
    """
    if world_size() <= 1:
        return model
    ids = [device().index] if device().type == "cuda" else None
    return DDP(model, device_ids=ids, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


def no_sync(model: nn.Module, enabled: bool = True):
    """Skip the gradient all-reduce (all micro-batches of an accumulation step but the last)."""
    if enabled and isinstance(model, DDP):
        return model.no_sync()
    return contextlib.nullcontext()


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
