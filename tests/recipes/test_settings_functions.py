"""One focused unit test per public function of mobilebert/recipes/settings.py whose behaviour the end-to-end
refusal tests (tests/recipes/test_settings.py, through the CLI) do not already pin: the dataclass <- dict <-
YAML <- override machinery, and the value checks' branches those tests do not reach. In-process, no torch
work, milliseconds each. Checks covered there (check_lr, check_positive, check_positive_int,
check_non_negative, check_warmup, check_batch and the CUDA branch of check_device) are not repeated here."""

from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch

from mobilebert.errors import ConfigError
from mobilebert.recipes import settings as S


@dataclass
class Optim:
    lr: float = 1e-3
    schedule: Literal["linear", "cosine"] = "linear"


@dataclass
class Job:
    steps: int = 10
    name: str | None = None
    fast: bool = False
    layers: list[int] = field(default_factory=lambda: [1, 2])
    optim: Optim = field(default_factory=Optim)
    overrides: dict = field(default_factory=dict)

    def validate(self):
        S.check_positive_int("steps", self.steps)


def test_from_dict_coerces_types_and_names_the_bad_key():
    job = S.from_dict(Job, {"steps": "20", "fast": "yes", "layers": [3], "optim": {"lr": "2e-4"}})
    assert job == Job(steps=20, fast=True, layers=[3], optim=Optim(lr=2e-4))
    with pytest.raises(ConfigError, match=r"^optim\.lrr: unknown setting \(did you mean lr\?\)$"):
        S.from_dict(Job, {"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"^optim\.schedule: 'step' is not one of 'linear', 'cosine'$"):
        S.from_dict(Job, {"optim": {"schedule": "step"}})
    with pytest.raises(ConfigError, match=r"^steps: expected an integer, got 2\.5$"):
        S.from_dict(Job, {"steps": 2.5})
    with pytest.raises(ConfigError, match=r"^steps: must be a positive integer, got 0$"):   # validate() runs
        S.from_dict(Job, {"steps": 0})


def test_to_dict_nests_dataclasses():
    assert S.to_dict(Job()) == {"steps": 10, "name": None, "fast": False, "layers": [1, 2],
                                "optim": {"lr": 1e-3, "schedule": "linear"}, "overrides": {}}


def test_parse_overrides_builds_nested_yaml_values():
    # YAML 1.1 reads 3e-4 (no dot) as a string; from_dict turns it into the float the field wants
    assert S.parse_overrides(["optim.lr=3e-4", "layers=[1, 2]", "name=", "fast=true", "tag=a: b: c"]) == {
        "optim": {"lr": "3e-4"}, "layers": [1, 2], "name": "", "fast": True, "tag": "a: b: c"}
    with pytest.raises(ConfigError, match="override 'steps': expected key=value"):
        S.parse_overrides(["steps"])
    with pytest.raises(ConfigError, match="override '=1': empty key"):
        S.parse_overrides(["=1"])
    with pytest.raises(ConfigError, match="override 'optim.lr.x=1': lr is not a group of settings"):
        S.parse_overrides(["optim.lr=1", "optim.lr.x=1"])


def test_merge_is_deep_and_leaves_its_inputs_alone():
    base = {"optim": {"lr": 1, "schedule": "linear"}, "steps": 5}
    out = S.merge(base, {"optim": {"lr": 2}, "name": "x"})
    assert out == {"optim": {"lr": 2, "schedule": "linear"}, "steps": 5, "name": "x"}
    assert base == {"optim": {"lr": 1, "schedule": "linear"}, "steps": 5}


def test_yaml_load_refuses_a_key_given_twice_inside_a_list():
    assert S.yaml_load("a: [1, 2]\nb: {c: 3}\n") == {"a": [1, 2], "b": {"c": 3}}
    with pytest.raises(S._DuplicateKey) as e:
        S.yaml_load("stages:\n  - name: kt\n    steps: 1\n    steps: 2\n")
    assert (e.value.key, e.value.line, e.value.first) == ("steps", 4, 3)


def test_read_yaml_refuses_missing_invalid_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'none.yaml'}: config file not found$"):
        S.read_yaml(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=f"^{bad}: not valid YAML"):
        S.read_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=f"^{bad}: expected a mapping of settings at the top level$"):
        S.read_yaml(bad)


def test_load_settings_applies_overrides_over_the_file_and_names_it(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("steps: 3\noptim:\n  lr: 1.0e-4\n  schedule: cosine\n")
    job = S.load_settings(Job, cfg, ["optim.lr=5e-4"])
    assert job.steps == 3 and job.optim == Optim(lr=5e-4, schedule="cosine")
    assert S.load_settings(Job, None, ["steps=4"]).steps == 4
    with pytest.raises(ConfigError, match=f"^{cfg}: optim.lrr: unknown setting"):
        S.load_settings(Job, cfg, ["optim.lrr=1"])


def test_check_range_closed_and_half_open():
    S.check_range("p", 1.0, 0.0, 1.0)
    with pytest.raises(ConfigError, match=r"^p: must be in \[0, 1\) \(a probability\), got 1\.0$"):
        S.check_range("p", 1.0, 0.0, 1.0, high_open=True, what=" (a probability)")
    with pytest.raises(ConfigError, match=r"^p: must be in \[0, 1\], got nan$"):
        S.check_range("p", float("nan"), 0.0, 1.0)


def test_check_seq_len_has_a_floor_of_8():
    S.check_seq_len("data.seq_len", 8, max_positions=512)
    with pytest.raises(ConfigError, match="^data.seq_len: must be at least 8, got 4$"):
        S.check_seq_len("data.seq_len", 4)


def test_check_device_refuses_an_unknown_name():
    S.check_device("run.device", "auto")
    S.check_device("run.device", "cpu")
    with pytest.raises(ConfigError, match="^run.device: 'tpu' is not one of auto, cpu, cuda, cuda:N$"):
        S.check_device("run.device", "tpu")
    with pytest.raises(ConfigError, match="is not one of"):
        S.check_device("run.device", "cuda:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU branch: needs a machine without a GPU")
def test_check_precision_fp16_needs_a_gpu():
    S.check_precision("run.precision", "bf16", "run.device", "cpu")
    S.check_precision("run.precision", "fp32", "run.device", "auto")
    with pytest.raises(ConfigError, match=r"^run.precision: fp16 needs a GPU \(run.device=auto\); use bf16 or fp32"):
        S.check_precision("run.precision", "fp16", "run.device", "auto")


def test_check_new_folder_accepts_absent_or_empty_only(tmp_path):
    S.check_new_folder("out", tmp_path / "absent")
    S.check_new_folder("out", tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=f"^out: {tmp_path} is not empty; pass --resume"):
        S.check_new_folder("out", tmp_path)
    with pytest.raises(ConfigError, match="is not empty"):   # a file where the folder should be
        S.check_new_folder("out", tmp_path / "notes.txt")


def test_flatten_keeps_overrides_whole():
    assert S.flatten({"a": {"b": 1, "c": {"d": 2}}, "student": {"overrides": {"hidden_size": 8}}}) == {
        "a.b": 1, "a.c.d": 2, "student.overrides": {"hidden_size": 8}}


def test_check_unchanged_names_the_first_changed_key(tmp_path):
    saved = tmp_path / "settings.yaml"
    S.dump_settings(Job(layers=[1, 2]), saved)
    S.check_unchanged(Job(), saved)                                  # lists come back from YAML as lists
    S.check_unchanged(Job(fast=True), saved, free={"fast"})
    with pytest.raises(ConfigError, match=rf"^optim.lr: 0.002 differs from the run being resumed \(0.001 in "
                                          rf"{saved}\)$"):
        S.check_unchanged(Job(steps=9, optim=Optim(lr=2e-3)), saved)


def test_dump_settings_round_trips_through_load_settings(tmp_path):
    job = Job(steps=7, name="x", fast=True, layers=[4], optim=Optim(2e-5, "cosine"), overrides={"hidden_size": 8})
    S.dump_settings(job, tmp_path / "settings.yaml")
    assert S.load_settings(Job, tmp_path / "settings.yaml") == job
