"""Batches computed ahead in worker processes, so a fast GPU never waits for the host (issue 3, throughput).

Pre-training draws batch `step` as a pure function of the step (`PretrainingData.batch`), which is what makes
resume and DDP exact. Building one 256 x 128 MLM + NSP batch takes 12.7 ms of Python/numpy on one core
(benchmarks/data_throughput.py); at the issue's GPU target (1M tokens/s, ~33 ms per 32k-token step) that is over
a third of each step, on the critical path. `StepPrefetcher`
keeps `prefetch` batches per worker in flight in `workers` processes (a torch DataLoader over step numbers) and
hands them out in step order. Batch `s` is still `fn(s)`, computed from the same arguments, so losses do not
change (tested); asking for a step other than the next one (a resume) restarts the workers at that step.

Starting the workers leaves every random stream of the training process alone: a DataLoader with workers
draws its workers' base seed from the global torch RNG when it is iterated, which would make a resumed run
(which starts its workers after restoring the RNG state) drop out of step with the uninterrupted one at its
first dropout mask (issue 10 item 2). The loader gets its own generator, seeded by the start step, instead.

    batches = StepPrefetcher(partial(data.batch, batch_size=32), start=0, stop=10_000, workers=4)
    batch = batches(0)    # same dict as data.batch(0, batch_size=32)
    batches.close()
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset


class _Steps(Dataset):
    def __init__(self, fn: Callable[[int], dict], start: int, stop: int):
        self.fn, self.start, self.stop = fn, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> dict:
        return self.fn(self.start + i)


class StepPrefetcher:
    """Callable `step -> fn(step)`, computed ahead by `workers` processes; see the module docstring."""

    def __init__(self, fn: Callable[[int], dict], start: int, stop: int, workers: int, prefetch: int = 4,
                 pin_memory: bool = False):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.fn, self.stop, self.workers = fn, stop, workers
        self.prefetch, self.pin_memory = prefetch, pin_memory and torch.cuda.is_available()
        self._it, self._next = None, None
        self._restart(start)

    def _restart(self, step: int) -> None:
        self.close()
        # Own generator: the workers' base seed must not be drawn from the global torch RNG (dropout's).
        # `fn` is a pure function of the step, so the value of the seed does not matter, only where it comes from.
        gen = torch.Generator().manual_seed(step)
        loader = DataLoader(_Steps(self.fn, step, self.stop), batch_size=None, shuffle=False,
                            num_workers=self.workers, prefetch_factor=self.prefetch, pin_memory=self.pin_memory,
                            persistent_workers=False, generator=gen)
        self._it, self._next = iter(loader), step

    def __call__(self, step: int) -> dict:
        if step >= self.stop:
            return self.fn(step)  # past the planned range: compute in-process
        if step != self._next:
            self._restart(step)
        batch = next(self._it)
        self._next = step + 1
        return batch

    def close(self) -> None:
        """Stop the workers: dropping the DataLoader iterator shuts them down (its __del__)."""
        self._it = None
