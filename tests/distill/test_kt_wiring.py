"""Wiring of knowledge transfer (paper §3.3-3.5; issue 11 item 5), with teacher and student of equal shapes:

* a student that is the teacher with only layer k changed gives zero transfer loss below k and a loss from k
  on, and the loss has exactly the factors of GR's PKT loss (checked against a hand computation);
* the optimizer the pipeline really builds for PKT stage l gives layer l 3x the LR, the layers below 0.3x
  (or nothing when frozen), and nothing to the layers above, the embeddings and the heads;
* the IB-BERT teacher's forward pass (which transformers cannot build) against one layer computed by hand in
  plain torch from its weights.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mobilebert.distill import steps as S
from mobilebert.recipes.train_settings import KtSettings
from mobilebert.heads import MobileBertForPreTraining
from mobilebert.presets import get_config

L = 4  # debug-ibbert depth


def batch(B: int = 3, S_: int = 12, pad: int = 4) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 3000, (B, S_), generator=g)
    mask = torch.ones(B, S_, dtype=torch.long)
    mask[0, S_ - pad:] = 0  # one padded row: the key mask must be applied the same way in both models
    ids[0, S_ - pad:] = 0
    types = torch.zeros(B, S_, dtype=torch.long)
    types[:, S_ // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return MobileBertForPreTraining(get_config("debug-ibbert")).eval()


def perturbed(teacher, k: int, where: str):
    """The teacher with one part of layer k (1-based) changed."""
    student = copy.deepcopy(teacher)
    layer = student.base_model.encoder.layer[k - 1]
    w = layer.attention.self.query.weight if where == "query" else layer.output.bottleneck.dense.weight
    with torch.no_grad():
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(k)) * 0.2)
    return student


def stage_losses(teacher, student, kt: KtSettings, b: dict) -> dict[int, dict]:
    """PKT stage l's loss terms (both models run l layers deep, as the pipeline runs them), l = 1..L."""
    out = {}
    for l in range(1, L + 1):
        fn = S.TransferLoss(teacher, kt, [l], L, depth=l)
        loss, logs = fn(S.Forward(student), b, fn.denominators(b))
        out[l] = {"loss": loss.item(), **{k: v.item() for k, v in logs.items()}}
    return out


def kl_settings() -> KtSettings:
    kt = KtSettings()
    kt.at.kind = "kl"  # KL is 0 for equal distributions (GR's cross-entropy is the teacher entropy there)
    return kt


@pytest.mark.parametrize("k", [1, 2, L])
def test_query_change_at_layer_k_gives_loss_from_k_on(teacher, k):
    """Q of layer k changed: attention of layer k and every feature map from k on differ; nothing below k."""
    b = batch()
    per = stage_losses(teacher, perturbed(teacher, k, "query"), kl_settings(), b)
    for l in range(1, k):
        assert per[l]["loss"] == 0 and per[l]["fmt"] == 0 and per[l]["at"] == 0, (l, per[l])
    assert per[k]["at"] > 1e-9, per[k]
    for l in range(k, L + 1):
        assert per[l]["fmt"] > 1e-9 and per[l]["beta"] + per[l]["gamma"] > 0, (l, per[l])


@pytest.mark.parametrize("k", [1, 3])
def test_output_change_at_layer_k_leaves_its_attention_alone(teacher, k):
    """Only layer k's output bottleneck changed: layer k's attention (computed before it) is the teacher's, its
    feature map is not, and layer k+1's attention (which reads that map) differs: hidden_states[l] is layer l's
    output and attention_scores[l - 1] layer l's scores."""
    b = batch()
    per = stage_losses(teacher, perturbed(teacher, k, "output"), kl_settings(), b)
    for l in range(1, k):
        assert per[l]["loss"] == 0, (l, per[l])
    assert per[k]["at"] == 0 and per[k]["fmt"] > 1e-9, per[k]
    assert per[k + 1]["at"] > 1e-9 and per[k + 1]["fmt"] > 1e-9, per[k + 1]


def hand_layer_loss(t_h, s_h, t_sc, s_sc) -> dict:
    """GR's PKT terms for one layer in plain torch: MSE of non-affine LayerNorm'd maps, cross-entropy of the
    attention distributions averaged over (batch, head, query) incl. padding, mean/var terms over tokens."""
    def ln(x):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-12)
    fmt = ((ln(t_h) - ln(s_h)) ** 2).mean()
    at = -(torch.softmax(t_sc, -1) * torch.log_softmax(s_sc, -1)).sum(-1).mean()
    beta = ((t_h.mean(-1) - s_h.mean(-1)) ** 2).mean()
    gamma = (t_h.var(-1, unbiased=False) - s_h.var(-1, unbiased=False)).abs().mean()
    return {"fmt": fmt, "at": at, "beta": beta, "gamma": gamma}


@pytest.mark.parametrize("stage", ["pkt-2", "jkt"])
def test_transfer_loss_has_gr_factors(teacher, stage):
    """loss = sum over the stage's layers of (100 FMT + 1 AT + 5000 beta + 5 gamma) / L (GR: x factor / 24)."""
    b = batch()
    student = perturbed(teacher, 2, "query")
    norm = student.base_model.encoder.layer[1].output.bottleneck.LayerNorm
    with torch.no_grad():  # and its output norm: feature-map means and variances differ clearly (beta, gamma)
        norm.weight.mul_(1.5 + 0.5 * torch.rand(norm.weight.shape, generator=torch.Generator().manual_seed(5)))
        norm.bias.add_(0.3)
    kt = KtSettings()  # GR defaults: fmt 100 standardized, at ce 1, beta 5000, gamma 5, padding averaged in
    layers, depth = ([2], 2) if stage == "pkt-2" else (list(range(1, L + 1)), None)
    fn = S.TransferLoss(teacher, kt, layers, L, depth=depth)
    loss, logs = fn(S.Forward(student), b, fn.denominators(b))
    with torch.no_grad():
        run = lambda m: m.base_model(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                                     output_hidden_states=True, output_attention_scores=True)
        t, s = run(teacher), run(student)
    want = {"fmt": 0.0, "at": 0.0, "beta": 0.0, "gamma": 0.0}
    for l in layers:
        terms = hand_layer_loss(t.hidden_states[l].double(), s.hidden_states[l].double(),
                                t.attention_scores[l - 1].double(), s.attention_scores[l - 1].double())
        for name in want:
            want[name] += terms[name].item()
    factors = {"fmt": 100.0, "at": 1.0, "beta": 5000.0, "gamma": 5.0}
    for name, f in factors.items():
        assert logs[name].item() == pytest.approx(want[name] * f / L, rel=1e-4, abs=1e-12), name
    assert loss.item() == pytest.approx(sum(want[n] * f / L for n, f in factors.items()), rel=1e-4)
    assert all(want[n] * f / L > 1e-3 for n, f in factors.items()), want  # every term weighs in


@pytest.mark.parametrize("stage", ["pkt-2", "jkt"])
def test_cls_weight_adds_the_cls_terms(teacher, stage):
    """kt.cls_weight = w: the feature-map and attention terms gain (w - 1) x their [CLS] part (position 0's map and
    the [CLS] query rows, over the same normaliser); the mean/var terms are unchanged."""
    b = batch()
    student = perturbed(perturbed(teacher, 2, "query"), 2, "output")  # layer 2's attention and its map differ
    layers, depth = ([2], 2) if stage == "pkt-2" else (list(range(1, L + 1)), None)

    def logs(w: float) -> dict:
        kt = KtSettings()
        kt.cls_weight = w
        fn = S.TransferLoss(teacher, kt, layers, L, depth=depth)
        return {k: v.item() for k, v in fn(S.Forward(student), b, fn.denominators(b))[1].items()}

    with torch.no_grad():
        run = lambda m: m.base_model(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                                     output_hidden_states=True, output_attention_scores=True)
        t, s = run(teacher), run(student)
    S_ = b["input_ids"].shape[1]
    cls = {"fmt": 0.0, "at": 0.0}
    for l in layers:  # [CLS] only: position 0's terms summed, over all tokens' / rows' count (GR's normalisers)
        terms = hand_layer_loss(t.hidden_states[l][:, :1].double(), s.hidden_states[l][:, :1].double(),
                                t.attention_scores[l - 1][:, :, :1].double(), s.attention_scores[l - 1][:, :, :1].double())
        cls["fmt"] += terms["fmt"].item() / S_
        cls["at"] += terms["at"].item() / S_
    one, five = logs(1.0), logs(5.0)
    for name, f in (("fmt", 100.0), ("at", 1.0)):
        assert cls[name] > 1e-6, cls
        assert five[name] == pytest.approx(one[name] + 4 * cls[name] * f / L, rel=1e-4), name
    for name in ("beta", "gamma"):
        assert five[name] == one[name], name


# ------------------------------------------------------------------------------ PKT per-layer learning rates
@pytest.fixture(scope="module")
def shards(tmp_path_factory, data_dir):
    from mobilebert.data import prepare

    out = tmp_path_factory.mktemp("wiring") / "shards"
    prepare([data_dir / "corpus" / "inaugural"], data_dir / "bert-base-uncased" / "vocab.txt", out, workers=1)
    return out


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, teacher):
    path = tmp_path_factory.mktemp("teacher") / "ibbert"
    teacher.save_pretrained(path)
    return path


@pytest.mark.parametrize("lower", ["reduced_lr", "freeze"])
def test_pkt_stage_optimizer_lr_multiples(tmp_path, shards, teacher_dir, monkeypatch, lower):
    """The optimizer `Pipeline` builds for each PKT stage (captured as it is built), group by group."""
    import mobilebert.recipes.train as P
    from mobilebert.recipes.train_settings import TrainSettings
    from mobilebert.recipes.settings import load_settings

    built = []
    real = P.build_optimizer

    def capture(model, name, lr, *a, **kw):
        opt = real(model, name, lr, *a, **kw)
        built.append((dict((id(p), n) for n, p in model.named_parameters()), opt, lr))
        return opt

    monkeypatch.setattr(P, "build_optimizer", capture)
    s = load_settings(TrainSettings, None, [
        f"run.out={tmp_path / 'run'}", "run.stages=[kt]", "run.device=cpu", "run.progress=false",
        "run.tensorboard=false", "run.save_every=0", f"teacher.init={teacher_dir}", "teacher.preset=debug-ibbert",
        "student.preset=debug-mobilebert", f"data.shards={shards}", "data.corpus=[]", "data.seq_len=32",
        "data.max_predictions=5", "data.eval_batches=0", f"kt.steps={L}", "kt.batch_size=2",
        f"kt.lower_layers={lower}", "kt.optim.lr=0.001"])
    assert P.Pipeline(s).run() == 0
    assert len(built) == L  # one optimizer per PKT stage
    for l, (names, opt, lr) in enumerate(built, 1):
        seen = set()
        for group in opt.param_groups:
            for p in group["params"]:
                name = names[id(p)]
                seen.add(name)
                i = int(name.split(".encoder.layer.")[1].split(".")[0]) + 1 if ".encoder.layer." in name else None
                want = 3.0 if i == l else (0.3 if (i is not None and i < l and lower == "reduced_lr") else None)
                assert want is not None, f"stage pkt-{l}: {name} must be frozen"
                assert group["initial_lr"] == pytest.approx(lr * want), f"stage pkt-{l}: {name}"
        expected = {n for n in names.values() if f".encoder.layer.{l - 1}." in n}
        if lower == "reduced_lr":
            expected |= {n for n in names.values() if any(f".encoder.layer.{i}." in n for i in range(l - 1))}
        assert seen == expected, f"stage pkt-{l}: trained {sorted(seen ^ expected)[:5]} wrongly"


# ------------------------------------------------------------------------------ the IB-BERT forward by hand
def test_ibbert_layer_by_hand(teacher):
    """Embeddings and layer 1 of the IB-BERT teacher, recomputed in float64 from the weights (official dataflow:
    Q, K, V read the inter-block map x and project to the intra width; one FFN; LayerNorm + GELU)."""
    cfg = teacher.config
    assert (cfg.normalization_type, cfg.hidden_act, cfg.num_feedforward_networks) == ("layer_norm", "gelu", 1)
    assert not cfg.key_query_shared_bottleneck and not cfg.use_bottleneck_attention
    w = {k: v.double() for k, v in teacher.state_dict().items()}
    b = batch()
    ids, mask, types = b["input_ids"], b["attention_mask"], b["token_type_ids"]
    B, T = ids.shape
    # each norm's own eps: 1e-12 (the config's), except the two transformers builds with torch's default 1e-5
    mods = dict(teacher.named_modules())
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], w[p + ".weight"], w[p + ".bias"], mods[p].eps)
    lin = lambda x, p: x @ w[p + ".weight"].T + w[p + ".bias"]

    e = w["mobilebert.embeddings.word_embeddings.weight"][ids]  # (B, T, E)
    zero = torch.zeros_like(e[:, :1])
    tri = torch.cat([torch.cat([e[:, 1:], zero], 1), e, torch.cat([zero, e[:, :-1]], 1)], -1)  # next, cur, prev
    x = lin(tri, "mobilebert.embeddings.embedding_transformation")
    x = x + w["mobilebert.embeddings.position_embeddings.weight"][:T] + w["mobilebert.embeddings.token_type_embeddings.weight"][types]
    x = ln(x, "mobilebert.embeddings.LayerNorm")  # (B, T, H)

    p = "mobilebert.encoder.layer.0."
    layer_input = ln(lin(x, p + "bottleneck.input.dense"), p + "bottleneck.input.LayerNorm")  # (B, T, I)
    A = cfg.num_attention_heads
    d = cfg.intra_bottleneck_size // A
    heads = lambda t: t.view(B, T, A, d).transpose(1, 2)  # (B, A, T, d)
    q, k, v = (heads(lin(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    probs = torch.softmax(scores, -1)  # (B, A, T, T)
    ctx = (probs @ v).transpose(1, 2).reshape(B, T, A * d)
    a = ln(lin(ctx, p + "attention.output.dense") + layer_input, p + "attention.output.LayerNorm")
    h = F.gelu(lin(a, p + "intermediate.dense"))  # (B, T, 4I)
    h = ln(lin(h, p + "output.dense") + a, p + "output.LayerNorm")
    y = ln(lin(h, p + "output.bottleneck.dense") + x, p + "output.bottleneck.LayerNorm")  # (B, T, H)

    with torch.no_grad():
        out = teacher.base_model(ids, mask, types, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(out.hidden_states[0].double(), x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.attentions[0].double(), probs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.hidden_states[1].double(), y, rtol=1e-4, atol=1e-4)
