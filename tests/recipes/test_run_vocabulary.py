"""One settings vocabulary for both recipes: device, precision, warm-up and seed are picked by the functions of
recipes/settings.py (neither recipe keeps its own), and the two recipes' settings classes have distinct names."""

import dataclasses
import inspect
import random

import numpy as np
import pytest
import torch

from mobilebert.recipes import finetune, finetune_settings, settings, train, train_settings
from mobilebert.recipes.settings import pick_device, pick_precision, seed_everything, start_device, warmup_steps


def test_pick_precision_resolves_auto_and_keeps_the_rest():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == "fp32"
    for p in ("fp32", "bf16", "fp16"):
        assert pick_precision(p, cpu) == p


def test_devices():
    assert pick_device("cpu") == torch.device("cpu") == start_device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("value, total, fraction, want", [(0.1, 95, True, 9), (0.0, 10, True, 0), (4, 40, False, 4),
                                                          (10_000, 500_000, False, 10_000)])
def test_warmup_steps_fraction_or_count(value, total, fraction, want):
    assert warmup_steps(value, total, fraction) == want


def test_seed_everything_seeds_all_three_generators():
    draws = []
    for _ in range(2):
        seed_everything(7)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
    assert draws[0] == draws[1]


def test_neither_recipe_keeps_its_own_pickers():
    for mod in (finetune, train):
        for name in ("pick_device", "pick_precision", "seed_everything", "warmup_steps"):
            obj = getattr(mod, name, None)
            assert obj is None or obj is getattr(settings, name), (mod.__name__, name)
    # the recipes call them (not torch.manual_seed / D.init directly)
    for mod in (finetune, train):
        src = inspect.getsource(mod)
        assert "seed_everything(" in src and "start_device(" in src and "pick_precision(" in src
        assert "torch.manual_seed(" not in src and "D.init(" not in src


def _dataclass_names(mod):
    return {n for n, o in vars(mod).items() if dataclasses.is_dataclass(o) and o.__module__ == mod.__name__}


def test_settings_class_names_are_distinct_across_recipes():
    ft, tr = _dataclass_names(finetune_settings), _dataclass_names(train_settings)
    assert {"FinetuneModelSettings", "FinetuneDataSettings", "FinetuneOptimSettings",
            "FinetuneTrainSettings"} <= ft
    assert {"ModelSettings", "DataSettings", "OptimSettings", "TrainSettings"} <= tr
    assert not ft & tr


def test_finetune_defaults_and_keys_unchanged():
    """The YAML keys and defaults a user writes stay what they were (behaviour unchanged)."""
    s = settings.to_dict(finetune_settings.FinetuneSettings())
    assert list(s) == ["out", "model", "data", "optim", "train", "distill"]
    assert s["optim"] == {"lr": 5e-5, "weight_decay": 0.01, "warmup": 0.1, "eps": 1e-6, "end_lr_ratio": 1e-4,
                          "clip_grad_norm": 1.0}
    assert (s["train"]["seed"], s["train"]["precision"], s["train"]["device"]) == (42, "auto", "auto")


def test_seed_everything_takes_train_stage_seeds():
    seed_everything(10_000 * 1_000_003 + 123)  # beyond NumPy's 32 bits: still seeds torch with the full value
    assert torch.initial_seed() == 10_000 * 1_000_003 + 123
