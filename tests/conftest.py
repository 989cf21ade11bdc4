"""Shared fixtures. Real data comes from ../shared/data or $MOBILEBERT_DATA and is never copied here."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    env = os.environ.get("MOBILEBERT_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "MANIFEST.md").is_file():
        # Fail loudly: CI has ../shared beside its clone, so a missing data folder is a real problem.
        pytest.fail(f"shared data not found at {root}: set MOBILEBERT_DATA to the shared/data folder")
    return root


@pytest.fixture(scope="session")
def vocab_file(data_dir) -> Path:
    return data_dir / "bert-base-uncased" / "vocab.txt"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
