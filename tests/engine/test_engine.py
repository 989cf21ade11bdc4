"""The shared engine: LAMB against hand-computed steps, exclusions, schedules, atomic checkpoints, the loop."""

import math
import os
import signal

import pytest
import torch
from torch import nn

from mobilebert.engine import checkpoint as C
from mobilebert.engine.logging import MetricsLogger, plot_losses, read_metrics
from mobilebert.engine.loop import LoopConfig, MeanLoss, train_loop
from mobilebert.engine.optim import Lamb, build_optimizer, build_schedule, linear_schedule, param_groups
from mobilebert.errors import CheckpointError, ConfigError, UserError


class Tiny(nn.Module):
    """Names like the real model: a weight, a bias, a LayerNorm, and a tied decoder."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.dense = nn.Linear(4, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.decoder = nn.Linear(4, 11, bias=False)
        self.decoder.weight = self.embed.weight  # tied, like cls.predictions.decoder

    def forward(self, input_ids):
        return self.decoder(self.LayerNorm(torch.relu(self.dense(self.embed(input_ids)))))


# ----------------------------------------------------------------------------------------- optimizer
def test_param_groups_exclude_norms_and_biases():
    groups = param_groups(Tiny(), weight_decay=0.01)
    by_excl = {g["exclude_from_trust_ratio"]: g for g in groups}
    assert by_excl[False]["weight_decay"] == 0.01 and by_excl[True]["weight_decay"] == 0.0
    assert len(by_excl[False]["params"]) == 2  # embed (== decoder, tied), dense.weight
    assert len(by_excl[True]["params"]) == 3   # dense.bias, LayerNorm.weight, LayerNorm.bias


def test_param_groups_lr_scale_and_frozen():
    m = Tiny()
    m.dense.weight.requires_grad_(False)
    scale = lambda n: 0.1 if n.startswith("LayerNorm") else (None if "embed" in n else 1.0)
    groups = param_groups(m, 0.01, lr_scale=scale)
    names = {id(p): n for n, p in m.named_parameters()}
    got = {(names[id(p)], g["lr_scale"]) for g in groups for p in g["params"]}
    assert got == {("dense.bias", 1.0), ("LayerNorm.weight", 0.1), ("LayerNorm.bias", 0.1)}


def _hand_lamb(w, g, lr, wd, trust, b1=0.9, b2=0.999, eps=1e-6):
    """One LAMB step from zero moments, scalar by scalar (GR lamb_optimizer.py, no bias correction)."""
    m = [(1 - b1) * x for x in g]
    v = [(1 - b2) * x * x for x in g]
    u = [mi / (math.sqrt(vi) + eps) + wd * wi for mi, vi, wi in zip(m, v, w)]
    r = 1.0
    if trust:
        wn, un = math.sqrt(sum(x * x for x in w)), math.sqrt(sum(x * x for x in u))
        r = wn / un if wn > 0 and un > 0 else 1.0
    return [wi - lr * r * ui for wi, ui in zip(w, u)]


@pytest.mark.parametrize("foreach", [True, False])
def test_lamb_matches_hand_computed_step(foreach):
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([0.3, 0.0], dtype=torch.float64))
    z = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # ||w|| = 0 -> trust ratio 1
    opt = Lamb([{"params": [w, z], "weight_decay": 0.01},
                {"params": [b], "weight_decay": 0.0, "exclude_from_trust_ratio": True}], lr=0.1, foreach=foreach)
    gw, gb, gz = [0.1, -0.2, 0.05], [1.0, -3.0], [0.5, 0.25]
    w.grad, b.grad, z.grad = (torch.tensor(x, dtype=torch.float64) for x in (gw, gb, gz))
    expect_w = _hand_lamb([1.0, -2.0, 0.5], gw, 0.1, 0.01, trust=True)
    expect_b = _hand_lamb([0.3, 0.0], gb, 0.1, 0.0, trust=False)
    expect_z = _hand_lamb([0.0, 0.0], gz, 0.1, 0.01, trust=True)
    opt.step()
    for p, e in ((w, expect_w), (b, expect_b), (z, expect_z)):
        assert torch.allclose(p, torch.tensor(e, dtype=torch.float64), atol=1e-12), (p, e)
    # The trust ratio makes the step of `w` exactly lr * ||w|| long.
    assert math.isclose(math.dist(expect_w, [1.0, -2.0, 0.5]), 0.1 * math.sqrt(1 + 4 + 0.25), rel_tol=1e-9)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_lamb_foreach_equals_reference_loop_over_steps(bias_correction):
    """The multi-tensor LAMB and the per-parameter loop agree over several steps on a real model's groups
    (decay and no-decay, trust ratio on and off, a frozen parameter without a gradient)."""
    from mobilebert import get_config
    from mobilebert.heads import MobileBertForPreTraining

    torch.manual_seed(0)
    a = MobileBertForPreTraining(get_config("debug-mobilebert")).double()
    b = MobileBertForPreTraining(get_config("debug-mobilebert")).double()
    b.load_state_dict(a.state_dict())
    opts = [Lamb(param_groups(m, 0.01), lr=1e-2, bias_correction=bias_correction, foreach=f)
            for m, f in ((a, True), (b, False))]
    for step in range(3):
        for m in (a, b):
            torch.manual_seed(step)
            for name, p in m.named_parameters():
                p.grad = None if "token_type_embeddings" in name else torch.randn_like(p)
        for o in opts:
            o.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14, msg=name)


def test_build_optimizer_names_and_errors():
    m = Tiny()
    assert isinstance(build_optimizer(m, "lamb", 1e-3), Lamb)
    assert isinstance(build_optimizer(m, "adamw", 1e-3), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="optim.name"):
        build_optimizer(m, "sgdd", 1e-3)
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        build_optimizer(m, "lamb", 1e-3)


def test_linear_schedule_values():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = linear_schedule(opt, warmup_steps=10, total_steps=100, end_lr_ratio=1e-4)
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(1.0)          # warm-up: 2.0 * 5/10
    assert lrs[10] == pytest.approx(2.0 * ((1 - 1e-4) * 0.9 + 1e-4))  # GR: decay counts from step 0
    assert lrs[55] == pytest.approx(2.0 * ((1 - 1e-4) * 0.45 + 1e-4))
    assert lrs[100] == pytest.approx(2.0e-4) and lrs[119] == pytest.approx(2.0e-4)


def test_pkt_background_schedule_values():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_schedule(opt, "pkt_official", 0, 100)
    f = sched.lr_lambdas[0]
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(min(0.9 + 0.1 * math.sqrt(0.9), 1.0))
    assert f(50) == pytest.approx(0.9 + 0.1 * math.sqrt(0.5))
    with pytest.raises(ConfigError, match="optim.schedule"):
        build_schedule(opt, "cosine", 0, 10)


# ---------------------------------------------------------------------------------------- checkpoint
def _trained(seed=0):
    torch.manual_seed(seed)
    m = Tiny()
    opt = build_optimizer(m, "lamb", 1e-2)
    sched = linear_schedule(opt, 2, 10)
    for _ in range(3):
        m(torch.tensor([[1, 2, 3]])).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return m, opt, sched


def test_checkpoint_round_trip_with_rng(tmp_path):
    m, opt, sched = _trained()
    path = C.save_checkpoint(tmp_path, C.checkpoint_name("pkt-2", 3), model=m, optimizer=opt, scheduler=sched,
                             step=3, stage="pkt-2", data_position=96, settings={"a": 1}, extra={"k": 5})
    after_save = torch.rand(3)
    assert C.latest_checkpoint(tmp_path) == path and (path / "settings.yaml").is_file()
    m2, opt2, sched2 = _trained(seed=1)
    torch.rand(7)  # disturb the RNG
    state = C.load_checkpoint(path, model=m2, optimizer=opt2, scheduler=sched2)
    assert (state["step"], state["stage"], state["data_position"], state["extra"]) == (3, "pkt-2", 96, {"k": 5})
    assert torch.equal(torch.rand(3), after_save)
    for (n, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), n
    assert m2.decoder.weight is m2.embed.weight  # still tied after loading
    assert sched2.state_dict() == sched.state_dict()
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)


def test_checkpoint_crash_mid_write_keeps_last_good(tmp_path, monkeypatch):
    m, opt, sched = _trained()
    good = C.save_checkpoint(tmp_path, "s-step-0000001", model=m, optimizer=opt, step=1, stage="s")

    def boom(model, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(C, "save_model_weights", boom)
    with pytest.raises(OSError):
        C.save_checkpoint(tmp_path, "s-step-0000002", model=m, optimizer=opt, step=2, stage="s")
    assert C.latest_checkpoint(tmp_path) == good
    assert not (tmp_path / "checkpoints" / "s-step-0000002").exists()
    monkeypatch.undo()
    C.save_checkpoint(tmp_path, "s-step-0000003", model=m, optimizer=opt, step=3, stage="s")
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # stale temp folder cleaned


def test_checkpoint_keeps_last_k_and_falls_back_from_bad_pointer(tmp_path, capsys):
    m, opt, _ = _trained()
    for s in range(1, 6):
        C.save_checkpoint(tmp_path, C.checkpoint_name("t", s), model=m, optimizer=opt, step=s, keep=2)
    kept = sorted(d.name for d in (tmp_path / "checkpoints").iterdir() if d.is_dir())
    assert kept == ["t-step-0000004", "t-step-0000005"]
    (tmp_path / "checkpoints" / "latest").write_text("t-step-0000009\n")
    assert C.latest_checkpoint(tmp_path).name == "t-step-0000005"  # the pointer's target is gone: say so
    assert "t-step-0000009: missing; resuming from the previous checkpoint, t-step-0000005" in capsys.readouterr().err
    for d in kept:
        (tmp_path / "checkpoints" / d / "training_state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="t-step-0000009: missing; no older checkpoint"):
        C.latest_checkpoint(tmp_path)


def test_load_weights_shape_mismatch_names_tensor(tmp_path):
    m, opt, _ = _trained()
    path = C.save_checkpoint(tmp_path, "x", model=m, step=1)
    other = Tiny()
    other.dense = nn.Linear(4, 5)
    with pytest.raises(CheckpointError, match=r"dense\.(weight|bias)"):
        C.load_model_weights(other, path)


# ---------------------------------------------------------------------------------------------- loop
class MaskedSumLoss:
    """A loss with a varying number of items per example: the global-normalised convention."""

    def denominators(self, batch):
        return {"n": float(batch["mask"].sum())}

    def __call__(self, model, batch, totals):
        err = (model(batch["x"]).squeeze(-1) - batch["y"]) ** 2 * batch["mask"]
        return err.sum() / totals["n"], {"n_items": batch["mask"].sum() / totals["n"]}


def _regression_batch(n=8):
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(n, 5, generator=g) > 0.4).float()
    return {"x": torch.randn(n, 5, 3, generator=g), "y": torch.randn(n, 5, generator=g), "mask": mask}


@pytest.mark.parametrize("opt_name", ["lamb", "adamw"])
def test_accumulation_equals_big_batch(opt_name):
    batch = _regression_batch()
    results = []
    for accum in (1, 2, 4):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = build_optimizer(model, opt_name, 0.1)
        cfg = LoopConfig(max_steps=3, grad_accum=accum, log_every=1, progress=False, clip_grad_norm=0.5)
        summary = train_loop(model, MaskedSumLoss(), lambda step: batch, opt, None, cfg)
        results.append((model.weight.detach().clone(), summary["loss"]))
    for w, loss in results[1:]:
        assert torch.allclose(w, results[0][0], atol=1e-6)
        assert loss == pytest.approx(results[0][1], rel=1e-6)


class RecordingLogger:
    def __init__(self):
        self.records = []

    def log(self, stage, step, metrics):
        self.records.append((stage, step, metrics["loss"]))


def _mean_loss(model, batch):
    return ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean(), {}


def test_sigterm_saves_and_resume_logs_identical_values():
    batches = lambda step: {"x": torch.randn(4, 3, generator=torch.Generator().manual_seed(step)),
                            "y": torch.ones(4)}

    def run(stop_at=None, start=0, state=None, model=None, opt=None):
        logger, saved = RecordingLogger(), []

        def on_step_end(step):
            if step == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)

        cfg = LoopConfig(max_steps=10, log_every=4, progress=False, stage="s")
        out = train_loop(model, MeanLoss(_mean_loss), batches, opt, None, cfg, logger=logger, start_step=start,
                         loop_state=state, on_step_end=on_step_end,
                         checkpoint_fn=lambda step, st: saved.append((step, st)))
        return out, logger.records, saved

    torch.manual_seed(0)
    m_full = nn.Linear(3, 1)
    m_part = nn.Linear(3, 1)
    m_part.load_state_dict(m_full.state_dict())
    full, full_rec, _ = run(model=m_full, opt=torch.optim.SGD(m_full.parameters(), lr=0.1))
    opt = torch.optim.SGD(m_part.parameters(), lr=0.1)
    part, part_rec, saved = run(stop_at=6, model=m_part, opt=opt)
    assert part["interrupted"] == signal.SIGTERM and not part["finished"] and saved[-1][0] == 6
    rest, rest_rec, _ = run(start=6, state=saved[-1][1], model=m_part, opt=opt)
    assert rest["finished"]
    assert part_rec + rest_rec == full_rec  # same window means, bit for bit
    assert torch.equal(m_part.weight, m_full.weight)


def test_metrics_logger_truncates_on_resume_and_plots(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for stage, n in (("teacher", 3), ("pd", 4)):
        for s in range(1, n + 1):
            log.log(stage, s, {"loss": 1.0 / s})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"stage": "pd", "st')  # torn line from a SIGKILL
    log = MetricsLogger(tmp_path, tensorboard=False, resume_from=("pd", 2))
    log.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["stage"], r["step"]) for r in recs] == [("teacher", 1), ("teacher", 2), ("teacher", 3),
                                                       ("pd", 1), ("pd", 2)]
    assert plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png").is_file()


def test_bf16_autocast_on_cpu_and_fp16_needs_gpu():
    batch = _regression_batch()
    model = nn.Linear(3, 1)
    opt = build_optimizer(model, "adamw", 0.01)
    out = train_loop(model, MaskedSumLoss(), lambda step: batch, opt, None,
                     LoopConfig(max_steps=2, log_every=1, progress=False, precision="bf16"))
    assert math.isfinite(out["loss"]) and model.weight.dtype == torch.float32
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        train_loop(model, MaskedSumLoss(), lambda step: batch, opt, None,
                   LoopConfig(max_steps=1, progress=False, precision="fp16"))


def test_nan_loss_is_a_clear_error():
    model = nn.Linear(3, 1)
    opt = build_optimizer(model, "adamw", 0.01)
    nan_loss = lambda m, b: ((m(b["x"]) * float("nan")).mean(), {})
    with pytest.raises(UserError, match="loss is nan at step 1"):
        train_loop(model, MeanLoss(nan_loss), lambda step: {"x": torch.ones(2, 3)}, opt, None,
                   LoopConfig(max_steps=3, log_every=1, progress=False, stage="s"))
