"""The loop's one calling convention (engine.loop.LossStep): every loss is asked for its denominators, then
called with (model, batch, totals); {} marks a mean loss. The losses of both recipes implement it, and the
engine imports no model code."""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import mobilebert
from mobilebert.distill import steps as S
from mobilebert.engine.loop import LoopConfig, MeanLoss, train_loop
from mobilebert.engine.optim import build_optimizer
from mobilebert.recipes.finetune import FinetuneLoss, make_loss_fn
from mobilebert.recipes.finetune_settings import DistillSettings


class Recorder:
    """A LossStep that records how the loop calls it."""

    def __init__(self, denominators: bool):
        self.with_counts, self.calls = denominators, []

    def denominators(self, batch):
        return {"n": float(batch["x"].shape[0])} if self.with_counts else {}

    def __call__(self, model, batch, totals):
        self.calls.append((batch["x"].shape[0], dict(totals)))
        loss = model(batch["x"]).pow(2).sum()
        return (loss / totals["n"] if self.with_counts else loss / batch["x"].shape[0]), {}


def _run(loss, accum=2, steps=2):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    batch = {"x": torch.randn(8, 3, generator=torch.Generator().manual_seed(1))}
    train_loop(model, loss, lambda step: batch, build_optimizer(model, "adamw", 0.1), None,
               LoopConfig(max_steps=steps, grad_accum=accum, progress=False, log_every=1))
    return model.weight.detach().clone()


@pytest.mark.parametrize("with_counts", [True, False])
def test_the_loop_calls_every_loss_one_way(with_counts):
    rec = Recorder(with_counts)
    _run(rec)
    want = {"n": 8.0} if with_counts else {}  # summed over the step's two micro-batches of 4
    assert rec.calls == [(4, want)] * 4


def test_both_normalisations_give_the_same_step_for_equal_micro_batches():
    # equal micro-batches: the mean of means equals the global mean, so the two conventions agree
    assert torch.allclose(_run(Recorder(True)), _run(Recorder(False)), atol=1e-6)


def test_mean_loss_adapts_a_plain_function():
    seen = []

    def fn(model, batch):
        seen.append(batch["x"].shape[0])
        return model(batch["x"]).pow(2).mean(), {}

    loss = MeanLoss(fn)
    assert loss.denominators({"x": torch.ones(2, 3)}) == {}
    after = _run(loss, accum=4, steps=1)
    assert seen == [2, 2, 2, 2] and torch.isfinite(after).all()


def test_both_recipes_losses_implement_the_protocol():
    for cls in (S.MlmNspLoss, S.DistillationLoss, S.TransferLoss, FinetuneLoss, MeanLoss):
        assert callable(getattr(cls, "denominators", None)) and callable(cls), cls
    ft = make_loss_fn("glue", False, None, DistillSettings())
    assert ft.denominators({"input_ids": torch.ones(2, 3)}) == {}  # a mean loss
    assert set(S.MlmNspLoss().denominators({"labels": torch.tensor([[-100, 5]]), "input_ids": torch.ones(1, 2)})) \
        == {"mlm", "seq"}


def test_the_engine_imports_no_model_code():
    engine = Path(mobilebert.__file__).parent / "engine"
    for path in engine.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("mobilebert.model", "mobilebert.heads", "mobilebert.recipes",
                                            "mobilebert.distill", "mobilebert.tasks")), (path.name, name)
