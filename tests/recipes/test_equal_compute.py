"""Equal compute across KT strategies (issue 11 item 4): `kt.steps` is a total, `kt.optim.schedule: auto`,
and BERT's once-per-document short-sequence target in the pre-training data."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mobilebert.cli import main
from mobilebert.data import MaskingConfig, PretrainingData, prepare
from mobilebert.recipes.train_stages import format_plan, plan
from mobilebert.recipes.train_settings import TrainSettings, kt_schedule, split_steps
from mobilebert.engine.optim import build_schedule
from mobilebert.errors import ConfigError
from mobilebert.recipes.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny-test.yaml"


def settings(*overrides: str) -> TrainSettings:
    return load_settings(TrainSettings, CONFIG, ["run.stages=[kt]", "teacher.init=somewhere", *overrides])


def kt_stages(*overrides: str, layers: int = 4):
    return [st for st in plan(settings(*overrides), layers) if st.kind != "pd"]


@pytest.mark.parametrize("strategy", ["pkt", "jkt", "akt", "bare"])
def test_kt_steps_is_the_total_for_every_strategy(strategy):
    stages = kt_stages(f"kt.strategy={strategy}", "kt.steps=40")
    assert sum(st.train.steps for st in stages) == 40
    assert len(stages) == (4 if strategy == "pkt" else 1)
    assert settings().kt.steps == 40  # the settings themselves are not rewritten


def test_pkt_splits_unevenly_divisible_totals_exactly():
    assert split_steps(10, 4) == [3, 3, 2, 2]
    assert [st.train.steps for st in kt_stages("kt.steps=10")] == [3, 3, 2, 2]
    with pytest.raises(ConfigError, match=r"^kt.steps: 3 steps cannot be split over 4 stages"):
        kt_stages("kt.steps=3")


@pytest.mark.parametrize("strategy,expected", [("pkt", "pkt_official"), ("jkt", "linear"), ("akt", "linear"),
                                               ("bare", "linear")])
def test_auto_schedule(strategy, expected):
    s = settings(f"kt.strategy={strategy}")
    assert s.kt.optim.schedule == "auto" and kt_schedule(s.kt) == expected
    assert {st.train.optim.schedule for st in kt_stages(f"kt.strategy={strategy}")} == {expected}
    # an explicit choice is kept
    assert {st.train.optim.schedule for st in kt_stages(f"kt.strategy={strategy}", "kt.optim.schedule=constant")} \
        == {"constant"}


def test_bare_gets_warmup_then_linear_decay():
    (st,) = kt_stages("kt.strategy=bare", "kt.steps=100", "kt.optim.warmup_steps=10")
    o = st.train.optim
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=o.lr)
    sched = build_schedule(opt, o.schedule, o.warmup_steps, st.train.steps, o.end_lr_ratio)
    f = [sched.lr_lambdas[0](k) for k in (0, 5, 10, 55, 100)]
    # GR/BERT: warm-up to the decay line that starts at 1 at step 0 (0.9 at step 10), then down to end_lr_ratio
    assert f[0] == 0 and f[1] == pytest.approx(0.5) and f[2] == pytest.approx(0.9, abs=1e-3)
    assert f[3] == pytest.approx(0.45, abs=1e-3) and f[4] == pytest.approx(o.end_lr_ratio)


def test_format_plan_lists_each_stage_steps():
    text = format_plan(kt_stages("kt.steps=10"))
    assert "pkt-1 .. pkt-2" in text and "3 steps each (6)" in text
    assert "pkt-3 .. pkt-4" in text and "2 steps each (4)" in text and "pkt_official" in text
    assert "jkt" in format_plan(kt_stages("kt.strategy=jkt", "kt.steps=10")) and "10 steps" in format_plan(
        kt_stages("kt.strategy=jkt", "kt.steps=10"))


def test_dry_run_prints_the_plan(tmp_path, data_dir, capsys):
    code = main(["train", str(CONFIG), "--dry-run", "--out", str(tmp_path / "run"),
                 f"data.corpus=[{data_dir / 'corpus' / 'inaugural'}]",
                 f"data.vocab={data_dir / 'bert-base-uncased' / 'vocab.txt'}"])
    out = capsys.readouterr().out
    assert code == 0 and "pkt-1 .. pkt-4" in out and "10 steps each (40)" in out
    assert not (tmp_path / "run").exists()


def test_configs_keep_their_meaning():
    for name, total, stages in (("tiny-test", 40, 4), ("quickstart-ibbert", 400, 4), ("paper-full", 240_000, 24)):
        s = load_settings(TrainSettings, REPO / "configs" / f"{name}.yaml", [])
        assert s.kt.steps == total and kt_schedule(s.kt) == "pkt_official"
        assert split_steps(s.kt.steps, stages) == [total // stages] * stages  # 10, 100, 10k per layer as before


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("docs") / "shards"
    prepare([data_dir / "corpus" / "inaugural"], data_dir / "bert-base-uncased" / "vocab.txt", out, workers=1,
            shard_tokens=40000)
    return out


def test_short_target_is_drawn_once_per_document(real_dir):
    data = PretrainingData(real_dir, seq_len=64, masking=MaskingConfig(short_seq_prob=0.3), seed=4)
    doc = np.searchsorted(data.corpus.doc_sent, data.seg_start, side="right") - 1  # (N,) document of each segment
    for d in np.unique(doc):
        assert len(np.unique(data.seg_target[doc == d])) == 1  # BERT: one target_seq_length per document
    per_doc = data.seg_target[np.unique(doc, return_index=True)[1]]
    assert 0.2 < (per_doc < data.max_tokens).mean() < 0.4  # ~ short_seq_prob of the documents ...
    assert (data.seg_target < data.max_tokens).mean() > (per_doc < data.max_tokens).mean()  # ... more examples
    again = PretrainingData(real_dir, seq_len=64, masking=MaskingConfig(short_seq_prob=0.3), seed=4)
    assert np.array_equal(again.seg_target, data.seg_target)  # a pure function of (corpus, seq_len, seed)
    b1, b2 = data.batch(3, 8), again.batch(3, 8)
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
