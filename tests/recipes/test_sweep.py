"""recipes/sweep.py without training: the records file, the mean ± std summary and its table."""

import json
import math

import pytest

from mobilebert.recipes.sweep import _append, _done, run_name, summarize, table


def rec(bs, lr, ep, seed, score):
    return {"run": run_name(bs, lr, ep, seed), "batch_size": bs, "lr": lr, "epochs": ep, "seed": seed,
            "metric": "acc", "score": score}


def test_run_name_is_the_folder_name():
    assert run_name(32, 5e-05, 3.0, 2) == "bs32_lr5e-05_ep3_seed2"
    assert run_name(16, 1e-4, 2.5, 1) == "bs16_lr0.0001_ep2.5_seed1"


def test_summarize_mean_and_sample_std_over_seeds_best_first():
    rows = summarize([rec(16, 1e-4, 2, 1, 0.5), rec(16, 1e-4, 2, 2, 0.7),
                      rec(32, 1e-4, 2, 1, 0.9), rec(32, 1e-4, 2, 2, None)])
    assert [(r["batch_size"], r["runs"]) for r in rows] == [(32, 2), (16, 2)]
    assert rows[0]["mean"] == pytest.approx(0.9) and rows[0]["std"] == 0.0   # one finite score: no spread
    assert rows[1]["mean"] == pytest.approx(0.6) and rows[1]["std"] == pytest.approx(math.sqrt(0.02))  # ddof=1


def test_summarize_puts_settings_without_a_score_last():
    rows = summarize([rec(16, 1e-4, 2, 1, None), rec(48, 1e-5, 2, 1, 0.1)])
    assert rows[0]["batch_size"] == 48 and math.isnan(rows[1]["mean"])


def test_table_rows():
    text = table(summarize([rec(16, 2e-5, 3, 1, 0.25), rec(16, 2e-5, 3, 2, 0.75)]), "acc")
    assert text.splitlines() == ["| batch | lr | epochs | acc mean ± std | seeds |", "|---|---|---|---|---|",
                                 "| 16 | 2e-05 | 3 | 0.5000 ± 0.3536 | 2 |"]


def test_records_are_appended_whole_and_a_torn_line_is_skipped(tmp_path):
    log = tmp_path / "sweep.jsonl"
    log.write_text(json.dumps(rec(16, 1e-4, 2, 1, 0.5)) + "\n" + '{"run": "bs16_lr', encoding="utf-8")  # torn
    _append(log, rec(16, 1e-4, 2, 2, 0.7))
    assert sorted(_done(log)) == ["bs16_lr0.0001_ep2_seed1", "bs16_lr0.0001_ep2_seed2"]
    assert log.read_text(encoding="utf-8").endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.jsonl"]   # no temporary left beside it
