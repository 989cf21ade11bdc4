"""The up-front memory estimate (mobilebert.recipes.estimate): exact parameter counts, activations that
extrapolate to a direct measurement of the full model, the terms each stage kind adds, and the one-line
refusal that names the setting to change."""

from types import SimpleNamespace as NS

import pytest
import torch

from mobilebert import get_config
from mobilebert.recipes import estimate as E
from mobilebert.distill.steps import run_model
from mobilebert.errors import ConfigError
from mobilebert.heads import MobileBertForPreTraining

SEQ, MASKED = 32, 5
HINTS = {k: ("kt.batch_size", "kt.grad_accum", "student.preset") for k in ("pkt", "jkt", "akt", "bare")}
HINTS.update(teacher=("teacher.train.batch_size", "teacher.train.grad_accum", "teacher.preset"),
             pd=("pd.batch_size", "pd.grad_accum", "student.preset"))


def stage(kind, batch_size=8, grad_accum=1, layer=None):
    return NS(name=kind if layer is None else f"{kind}-{layer}", kind=kind, layer=layer,
              train=NS(batch_size=batch_size, grad_accum=grad_accum, steps=1))


def measured_activations(cfg, batch, precision, hidden):
    """What autograd keeps for the whole model on a real batch (the quantity the estimate extrapolates)."""
    model = MobileBertForPreTraining(cfg).train()
    ids = torch.randint(1, 1000, (batch, SEQ))
    labels = torch.full_like(ids, -100)
    labels[:, 1:1 + MASKED] = ids[:, 1:1 + MASKED]
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
         "labels": labels}

    def fwd():
        with E._autocast(precision):
            return run_model(model, b, heads=True, hidden=hidden, scores=hidden)

    return sum(E.saved_bytes(fwd, list(model.parameters()))), sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", ["debug-mobilebert", "debug-ibbert"])
@pytest.mark.parametrize("precision, hidden", [("fp32", False), ("fp32", True), ("bf16", False)])
def test_probe_extrapolates_to_the_full_model(preset, precision, hidden):
    cfg = get_config(preset)
    probe = {**E._pretraining_probe(cfg, SEQ, MASKED, precision, hidden), "model_layers": cfg.num_hidden_layers}
    params, act = E._at(probe, cfg.num_hidden_layers, 3)
    real_act, real_params = measured_activations(cfg, 3, precision, hidden)
    assert params == real_params  # tied embeddings counted once
    if precision == "fp32":
        assert act == real_act
    else:  # autocast's weight copies are told apart by shape: within a few percent
        assert abs(act - real_act) / real_act < 0.05


def test_terms_of_each_stage_kind():
    teacher, student = get_config("debug-ibbert"), get_config("debug-mobilebert")
    t_params = sum(p.numel() for p in MobileBertForPreTraining(teacher).parameters())
    s_params = sum(p.numel() for p in MobileBertForPreTraining(student).parameters())
    rows = {r["stage"]: r for r in E.memory_estimate(
        [stage("teacher"), stage("pkt", layer=1), stage("pkt", layer=4), stage("bare"), stage("pd")],
        teacher, student, SEQ, MASKED)}
    assert rows["teacher"]["weights"] == 20 * t_params and rows["teacher"]["teacher"] == 0
    assert rows["pd"]["weights"] == 20 * s_params and rows["pd"]["teacher"] == 4 * t_params
    assert rows["bare"]["teacher"] == 0  # no teacher in the bare baseline
    assert rows["pkt-1"]["activations"] < rows["pkt-4"]["activations"]  # PKT stage l runs l layers deep
    for r in rows.values():
        assert r["total"] == r["weights"] + r["teacher"] + r["activations"]


def test_activations_follow_the_micro_batch():
    teacher, student = get_config("debug-ibbert"), get_config("debug-mobilebert")

    def act(**kw):
        return E.memory_estimate([stage("pd", **kw)], teacher, student, SEQ, MASKED)[0]["activations"]

    a8, a16, a24 = act(batch_size=8), act(batch_size=16), act(batch_size=24)
    assert a24 - a16 == a16 - a8 > 0 and a16 < 2 * a8  # per sequence, plus a per-forward part (MLM decoder)
    assert act(batch_size=16, grad_accum=2) == a8  # accumulation splits the batch into micro-batches
    two_ranks = E.memory_estimate([stage("pd", batch_size=16)], teacher, student, SEQ, MASKED, world_size=2)
    assert two_ranks[0]["activations"] == a8  # each rank holds its slice
    bf16 = E.memory_estimate([stage("pd", batch_size=16)], teacher, student, SEQ, MASKED, precision="bf16")
    assert bf16[0]["activations"] < a16


def test_clean_input_doubles_the_stages_that_run_both_batches():
    """kt.input=clean with MLM in the step (AKT, a final stage with feature maps) runs 2B sequences: the estimate
    counts the activations of twice the micro-batch (the MLM logits stay those of the masked rows) and 2x FLOPs."""
    teacher, student = get_config("debug-ibbert"), get_config("debug-mobilebert")
    stages = [stage("pd", batch_size=8), stage("akt", batch_size=8), stage("pkt", layer=2)]
    plain = {r["stage"]: r for r in E.memory_estimate(stages, teacher, student, SEQ, MASKED)}
    both = {r["stage"]: r for r in E.memory_estimate(stages, teacher, student, SEQ, MASKED,
                                                     doubled=frozenset({"pd", "akt"}))}
    twice = {r["stage"]: r for r in E.memory_estimate([stage("pd", batch_size=16), stage("akt", batch_size=16)],
                                                      teacher, student, SEQ, MASKED)}
    for k in ("pd", "akt"):
        assert plain[k]["activations"] < both[k]["activations"] < twice[k]["activations"]
        assert both[k]["weights"] == plain[k]["weights"] and both[k]["teacher"] == plain[k]["teacher"]
    assert both["pkt-2"] == plain["pkt-2"]
    run = lambda **kw: {r["stage"]: r["pflops"] for r in E.estimate(stages, teacher, student, SEQ, MASKED / SEQ,
                                                                      1e12, **kw)}
    a, b = run(), run(doubled=frozenset({"pd", "akt"}))
    assert b["pd"] == pytest.approx(2 * a["pd"]) and b["akt"] == pytest.approx(2 * a["akt"]) and b["pkt-2"] == a["pkt-2"]


def test_paper_scale_teacher_needs_hundreds_of_gib():
    """IB-BERT_LARGE at batch 4096 (the defaults an empty config used to start): far beyond any one machine."""
    rows = E.memory_estimate([stage("teacher", batch_size=4096)], get_config("ibbert-large"), get_config("mobilebert"),
                             128, 20)
    assert rows[0]["activations"] > 200 * E.GiB
    assert 5 * E.GiB < rows[0]["weights"] < 7 * E.GiB  # 293M parameters x 20 bytes


def test_check_memory_names_the_setting_to_change():
    rows = [{"stage": "pd", "kind": "pd", "micro_batch": 64, "weights": 1 << 30, "teacher": 1 << 30,
             "activations": 64 << 30, "total": 66 << 30}]
    E.check_memory(rows, 100 << 30, "here", "run.allow_large", HINTS)  # fits: no error
    E.check_memory(rows, None, "here", "run.allow_large", HINTS)       # memory unknown: no refusal
    with pytest.raises(ConfigError) as e:
        E.check_memory(rows, 16 << 30, "this machine (16.0 GiB available)", "run.allow_large", HINTS)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("pd: the run needs about 66.0 GiB (weights+gradients+optimizer 1.0 GiB, "
                                               "teacher 1.0 GiB, activations 64.0 GiB at micro-batch 64)")
    assert "but this machine (16.0 GiB available); lower pd.batch_size or raise pd.grad_accum" in msg
    assert "lower pd.batch_size or raise pd.grad_accum" in msg and "run.allow_large=true" in msg
    with pytest.raises(ConfigError, match="choose a smaller student.preset"):  # one sequence does not fit either
        E.check_memory(rows, 2 << 30, "here", "run.allow_large", HINTS)


def test_available_memory_on_cpu():
    have, where = E.available_memory(torch.device("cpu"))
    total = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) * 1024
    assert 0 < have <= total and "GiB available" in where
