"""The shared training engine: one loop, one optimizer module, one checkpoint format, one logger.

Every job (teacher pre-training, knowledge transfer, distillation, GLUE/SQuAD fine-tuning) builds its
model and a loss step (`LossStep`: `denominators(batch)`, `__call__(model, batch, totals) -> (loss, logs)`)
and hands them to `train_loop`. Multi-process
work goes through `mobilebert.engine.distributed`; recipes never import `torch.distributed`.

Modules:
    optim        LAMB (official MobileBERT semantics), AdamW, parameter groups, LR schedules.
    distributed  torchrun/DDP glue (NCCL on GPU, gloo on CPU); rank-0 helpers.
    checkpoint   atomic training-state checkpoints (HF-layout weights + optimizer/scheduler/RNG).
    logging      JSONL + TensorBoard metrics, loss-curve plot.
    loop         `train_loop`: accumulation, clipping, autocast, progress bar, SIGTERM/SIGINT.
"""

from mobilebert.engine.loop import LoopConfig, LossStep, MeanLoss, train_loop
from mobilebert.engine.optim import Lamb, build_optimizer, build_schedule, linear_schedule, param_groups

__all__ = ["LoopConfig", "LossStep", "MeanLoss", "train_loop", "Lamb", "build_optimizer", "build_schedule", "linear_schedule",
           "param_groups"]
