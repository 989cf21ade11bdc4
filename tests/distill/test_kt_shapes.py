"""Knowledge transfer across shapes (issue 11): the layer map, width projections, head grouping, the SVD
init and `emb` stage, and PD without teacher logits, each checked against a hand computation on tiny models."""

import math

import pytest
import torch
import torch.nn.functional as F

from mobilebert import get_config
from mobilebert.config import MobileBertConfig
from mobilebert.distill import losses as L
from mobilebert.distill import shapes as SH
from mobilebert.distill import steps as S
from mobilebert.distill import transfer as T
from mobilebert.recipes.train_settings import KtSettings
from mobilebert.engine.optim import build_optimizer
from mobilebert.errors import ConfigError
from mobilebert.heads import MobileBertForPreTraining

V = 120


def bert_cfg(hidden=48, layers=4, heads=8, vocab=V) -> MobileBertConfig:
    return MobileBertConfig.from_hf_dict({"model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers,
                                          "num_attention_heads": heads, "intermediate_size": 2 * hidden,
                                          "vocab_size": vocab, "max_position_embeddings": 64})


def tiny_bert_teacher(**kw):
    torch.manual_seed(0)
    return T.freeze(MobileBertForPreTraining(bert_cfg(**kw)).eval())


def tiny_student(layers=2, hidden=64, heads=4):
    torch.manual_seed(1)
    cfg = get_config("debug-mobilebert", vocab_size=V, num_hidden_layers=layers, hidden_size=hidden,
                     num_attention_heads=heads)
    return MobileBertForPreTraining(cfg).eval()


def batch(n=4, s=10):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (n, s), generator=g)
    mask = torch.ones(n, s, dtype=torch.long)
    mask[:, -3:] = 0
    labels = torch.full((n, s), -100)
    labels[:, 2:4] = ids[:, 2:4]
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask, "labels": labels,
            "next_sentence_label": torch.tensor([0, 1] * (n // 2))}


def totals(loss_fn, b):
    return loss_fn.denominators(b)


# ------------------------------------------------------------------------------------------ layer map
def test_uniform_layer_map():
    assert SH.layer_map(None, 24, 24) == list(range(1, 25))      # identity when the depths match
    assert SH.layer_map(None, 2, 6) == [3, 6]                    # MiniLM (6) -> 2-layer student
    assert SH.layer_map(None, 4, 6) == [2, 3, 5, 6]              # 1.5 -> 2, 4.5 -> 5: halves round up
    assert SH.layer_map(None, 4, 24) == [6, 12, 18, 24]
    assert SH.layer_map([1, 4], 2, 6) == [1, 4]


@pytest.mark.parametrize("given, student, why", [
    ([1, 7], 2, "outside"), ([0, 3], 2, "outside"), ([3, 3], 2, "increasing"), ([4, 2], 2, "increasing"),
    ([1, 2, 3], 2, "entries"), (None, 8, "deeper"), ("3,6", 2, "list"),
])
def test_bad_layer_map_names_the_key(given, student, why):
    with pytest.raises(ConfigError) as e:
        SH.layer_map(given, student, 6)
    assert str(e.value).startswith("kt.layer_map:") and why in str(e.value)


def test_transfer_follows_the_layer_map_and_runs_the_teacher_only_as_deep_as_needed():
    teacher, student = tiny_bert_teacher(hidden=64, heads=4), tiny_student(layers=2)
    kt = KtSettings()
    kt.mean_var.beta = kt.mean_var.gamma = 0.0
    ran = []
    for i, layer in enumerate(teacher.base_model.encoder.layer):
        layer.register_forward_hook(lambda *a, i=i: ran.append(i + 1))
    b = batch()
    loss_fn = S.TransferLoss(teacher, kt, [1], 2, depth=1, layer_map=[2, 4], student_heads=4)
    loss, logs = loss_fn(S.Forward(student), b, totals(loss_fn, b))
    assert ran == [1, 2]  # PKT stage 1 learns teacher layer m_1 = 2: the teacher runs 2 layers deep
    with torch.no_grad():
        t = teacher.base_model(b["input_ids"], b["attention_mask"], output_hidden_states=True,
                               output_attention_scores=True)
        s = student.base_model(b["input_ids"], b["attention_mask"], output_hidden_states=True,
                               output_attention_scores=True)
    n = b["input_ids"].numel()
    fmt = L.feature_map_loss(t.hidden_states[2], s.hidden_states[1], standardize_maps=True) * 100 / 2
    at = L.attention_ce_loss(t.attention_scores[1], s.attention_scores[0], normalizer=n * 4) * 1.0 / 2
    torch.testing.assert_close(logs["fmt"], fmt)
    torch.testing.assert_close(logs["at"], at)
    ran.clear()
    jkt = S.TransferLoss(teacher, kt, [1, 2], 2, layer_map=[2, 4], student_heads=4)
    _, logs = jkt(S.Forward(student), b, totals(jkt, b))
    assert ran == [1, 2, 3, 4]
    fmt2 = fmt + L.feature_map_loss(t.hidden_states[4], s.hidden_states[2], standardize_maps=True) * 100 / 2
    torch.testing.assert_close(logs["fmt"], fmt2)


# ------------------------------------------------------------------------------------------ projections
def test_projections_carry_feature_maps_to_the_teacher_width_and_train_with_their_layer():
    teacher, student = tiny_bert_teacher(hidden=48, heads=8), tiny_student(layers=2, hidden=64)
    proj = SH.Projections(64, 48, 2, seed=0)
    fwd = S.Forward(student, proj)
    kt = KtSettings()
    b = batch()
    loss_fn = S.TransferLoss(teacher, kt, [2], 2, depth=2, layer_map=[2, 4], student_heads=4)
    loss, logs = loss_fn(fwd, b, totals(loss_fn, b))
    with torch.no_grad():
        th = teacher.base_model(b["input_ids"], b["attention_mask"], output_hidden_states=True).hidden_states[4]
        sh = student.base_model(b["input_ids"], b["attention_mask"], output_hidden_states=True).hidden_states[2]
        sh = proj(2, sh)
    assert sh.shape[-1] == th.shape[-1] == 48
    torch.testing.assert_close(logs["fmt"], L.feature_map_loss(th, sh, standardize_maps=True) * 100 / 2)
    beta, gamma = L.mean_var_loss(th, sh)  # the mean/variance terms read the projected map too
    torch.testing.assert_close(logs["beta"], beta * 5000 / 2)
    torch.testing.assert_close(logs["gamma"], gamma * 5 / 2)

    # PKT stage 2: the optimizer holds student layer 2 (3x), layer 1 (0.3x) and projection 2 (3x), nothing else.
    scale = T.forward_plan(T.stage_plan("pkt", 2, 2), T.projection_scales("pkt", 2, 2, 3.0))
    T.apply_plan(fwd, scale)
    opt = build_optimizer(fwd, "lamb", 1e-3, lr_scale=scale)
    in_opt = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    names = {n: in_opt.get(id(p)) for n, p in fwd.named_parameters()}
    assert names["proj.maps.2.weight"] == 3.0 and names["proj.maps.2.bias"] == 3.0
    assert names["proj.maps.0.weight"] is None and names["proj.maps.1.weight"] is None
    assert not proj.maps[1].weight.requires_grad
    loss.backward()
    assert proj.maps[2].weight.grad is not None and proj.maps[1].weight.grad is None
    # the exported student is the model alone: no projection tensors in its state
    assert not any("maps" in k for k in student.state_dict())
    assert all(k.startswith(("model.", "proj.maps.")) for k in fwd.state_dict())


def test_projection_scales_per_stage():
    assert T.projection_scales("emb", 4) == {0: 1.0}
    assert T.projection_scales("pkt", 4, 3, 3.0) == {3: 3.0}
    assert T.projection_scales("jkt", 2) == {1: 1.0, 2: 1.0}
    assert T.projection_scales("pd", 4, pd_feature_maps=True) == {4: 1.0}
    assert T.projection_scales("pd", 4) == {} and T.projection_scales("bare", 4) == {}
    assert T.projection_scales("pkt", 4, 3, kt_feature_maps=False) == {}  # kt.fmt/mean_var all 0: AT only


def test_projections_do_not_touch_the_global_rng():
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    p1 = SH.Projections(8, 6, 2, seed=3)
    b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(p1.maps[1].weight, SH.Projections(8, 6, 2, seed=3).maps[1].weight)


# ------------------------------------------------------------------------------------------ heads
def test_group_heads_averages_attention_distributions():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 6, 5, 5, generator=g)
    grouped = SH.group_heads(scores, 2)  # 6 heads -> 2 groups of 3
    p = scores.softmax(-1)
    want = torch.stack([p[:, 0:3].mean(1), p[:, 3:6].mean(1)], 1)
    torch.testing.assert_close(grouped.exp(), want)
    torch.testing.assert_close(SH.group_heads(scores, 6), scores.log_softmax(-1))  # groups of one: unchanged
    masked = scores.masked_fill(torch.tensor([0, 0, 0, 1, 1], dtype=torch.bool), float("-inf"))
    out = SH.group_heads(masked, 3)
    assert torch.isfinite(out[..., :3]).all() and (out[..., 3:] == float("-inf")).all()


@pytest.mark.parametrize("kind", ["ce", "kl"])
def test_attention_transfer_across_head_counts_by_hand(kind):
    teacher, student = tiny_bert_teacher(hidden=64, heads=8), tiny_student(layers=2, heads=2)  # 8 -> 2 heads
    kt = KtSettings()
    kt.at.kind = kind
    b = batch()
    loss_fn = S.TransferLoss(teacher, kt, [1], 2, depth=1, layer_map=[2, 4], student_heads=2)
    d = totals(loss_fn, b)
    assert d["rows_at"] == b["input_ids"].numel() * 2  # rows counted at the common head count
    _, logs = loss_fn(S.Forward(student), b, d)
    with torch.no_grad():
        ts = teacher.base_model(b["input_ids"], b["attention_mask"], output_attention_scores=True).attention_scores[1]
        ss = student.base_model(b["input_ids"], b["attention_mask"], output_attention_scores=True).attention_scores[0]
    pt = ts.softmax(-1).view(4, 2, 4, 10, 10).mean(2)  # teacher: 8 heads averaged in 2 groups of 4
    ps = ss.softmax(-1)                                # student: 2 heads as they are
    if kind == "ce":
        per_row = -torch.where(pt > 0, pt * ps.log(), torch.zeros_like(pt)).sum(-1)  # padded keys: 0 log 0 = 0
    else:
        per_row = torch.where(pt > 0, pt * (pt.log() - ps.log()), torch.zeros_like(pt)).sum(-1)
    torch.testing.assert_close(logs["at"], per_row.sum() / d["rows_at"] / 2, rtol=1e-4, atol=1e-5)


def test_equal_head_counts_give_todays_attention_loss_exactly():
    teacher = T.freeze(MobileBertForPreTraining(get_config("debug-ibbert", vocab_size=V)).eval())
    student = MobileBertForPreTraining(get_config("debug-mobilebert", vocab_size=V)).eval()
    b = batch()
    kt = KtSettings()
    new = S.TransferLoss(teacher, kt, [2], 4, depth=2, layer_map=[1, 2, 3, 4], student_heads=4)
    _, logs = new(S.Forward(student), b, totals(new, b))
    with torch.no_grad():
        ts = teacher.base_model(b["input_ids"], b["attention_mask"], output_attention_scores=True).attention_scores[1]
        ss = student.base_model(b["input_ids"], b["attention_mask"], output_attention_scores=True).attention_scores[1]
    assert torch.equal(logs["at"], L.attention_ce_loss(ts, ss, normalizer=b["input_ids"].numel() * 4) / 4)


def test_head_counts_that_cannot_be_grouped():
    assert SH.check_head_grouping(12, 4) == 4 and SH.check_head_grouping(2, 8) == 2
    with pytest.raises(ConfigError, match="^num_attention_heads: teacher 12 and student 8"):
        SH.check_head_grouping(12, 8)


# ------------------------------------------------------------------------------------------ from-teacher
def test_from_teacher_student_is_mobilebert_shaped_like_the_teacher():
    minilm = bert_cfg(hidden=384, layers=6, heads=12, vocab=30522)
    cfg = SH.from_teacher_config(minilm)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers) == (384, 12, 6)
    assert (cfg.embedding_size, cfg.intra_bottleneck_size, cfg.intermediate_size) == (128, 96, 384)
    assert cfg.trigram_input and cfg.num_feedforward_networks == 4 and cfg.key_query_shared_bottleneck
    assert (cfg.normalization_type, cfg.hidden_act, cfg.model_type) == ("no_norm", "relu", "mobilebert")
    assert (cfg.vocab_size, cfg.max_position_embeddings) == (30522, 64)
    assert SH.from_teacher_config(minilm, {"num_hidden_layers": 2}).num_hidden_layers == 2
    base = SH.from_teacher_config(get_config("bert-base"))
    assert (base.hidden_size, base.intra_bottleneck_size, base.num_attention_heads) == (768, 192, 12)
    with pytest.raises(ConfigError, match="^student.overrides.hiden_size"):
        SH.from_teacher_config(minilm, {"hiden_size": 3})
    with pytest.raises(ConfigError, match="^student.overrides.embedding_size"):
        SH.from_teacher_config(bert_cfg(hidden=64, heads=4))  # 128-d embeddings need a wider teacher


# ------------------------------------------------------------------------------------------ emb stage, SVD
def test_svd_init_reproduces_the_teachers_word_embeddings_at_rank_e():
    teacher = tiny_bert_teacher(hidden=48, heads=4)
    student = MobileBertForPreTraining(SH.from_teacher_config(teacher.config, {"embedding_size": 16}))
    info = T.svd_init_embeddings(teacher, student)
    et = teacher.base_model.embeddings.word_embeddings.weight
    u, s, vh = torch.linalg.svd(et, full_matrices=False)
    best = (u[:, :16] * s[:16]) @ vh[:16]  # the best rank-16 approximation (Eckart-Young)
    emb = student.base_model.embeddings
    W = emb.embedding_transformation.weight  # (48, 3 x 16): [next, cur, prev]
    torch.testing.assert_close(emb.word_embeddings.weight @ W[:, 16:32].t(), best, rtol=1e-4, atol=1e-5)
    assert not W[:, :16].any() and not W[:, 32:].any() and not emb.embedding_transformation.bias.any()
    assert torch.equal(emb.position_embeddings.weight, teacher.base_model.embeddings.position_embeddings.weight)
    assert info["rank"] == 16
    assert math.isclose(info["energy"], float(s[:16].pow(2).sum() / s.pow(2).sum()), rel_tol=1e-5)
    # a lone token (no neighbours): the pre-norm embedding is the teacher's rank-16 word vector + position + type
    ids = torch.tensor([[7]])
    with torch.no_grad():
        e = emb.embedding_transformation(torch.cat([torch.zeros(1, 1, 16), emb.word_embeddings(ids),
                                                    torch.zeros(1, 1, 16)], -1))
    torch.testing.assert_close(e[0, 0], best[7], rtol=1e-4, atol=1e-5)


def test_emb_stage_trains_the_embeddings_only_and_lowers_its_loss():
    teacher = tiny_bert_teacher(hidden=48, heads=4)
    student = MobileBertForPreTraining(SH.from_teacher_config(teacher.config, {"embedding_size": 16,
                                                                               "num_hidden_layers": 2})).eval()
    T.svd_init_embeddings(teacher, student)
    kt = KtSettings()
    kt.fmt.standardize = False
    loss_fn = S.TransferLoss(teacher, kt, [0], 2, depth=0, layer_map=[2, 4], student_heads=4)
    assert not loss_fn.want_scores  # no attention at the embedding output
    fwd = S.Forward(student)
    scale = T.forward_plan(T.stage_plan("emb", 2), {})
    T.apply_plan(fwd, scale)
    opt = build_optimizer(fwd, "adamw", 3e-3, lr_scale=scale)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    b = batch()
    losses = []
    for _ in range(15):
        loss, logs = loss_fn(fwd, b, totals(loss_fn, b))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert logs["at"] == 0
    assert losses[-1] < losses[0]
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".embeddings." in k or k == "cls.predictions.decoder.weight" for k in changed), changed


# ------------------------------------------------------------------------------------------ PD without logits
def test_pd_without_teacher_logits_is_mlm_nsp_and_last_layer_feature_maps():
    teacher, student = tiny_bert_teacher(hidden=48, heads=8), tiny_student(layers=2, hidden=64)
    teacher.cls.predictions.register_forward_hook(lambda *a: pytest.fail("the teacher's MLM head was used"))
    proj = SH.Projections(64, 48, 2, seed=0)
    loss_fn = S.DistillationLoss(teacher, 0.5, teacher_logits=False, fmt_weight=100.0, fmt_layers=(2, 4))
    b = batch()
    d = totals(loss_fn, b)
    loss, logs = loss_fn(S.Forward(student, proj), b, d)
    with torch.no_grad():
        th = teacher.base_model(b["input_ids"], b["attention_mask"], output_hidden_states=True).hidden_states[4]
        out = student.base_model(b["input_ids"], b["attention_mask"], output_hidden_states=True)
        keep = b["labels"] != -100
        mlm = F.cross_entropy(student.cls.predictions(out.last_hidden_state[keep]), b["labels"][keep])
        nsp = F.cross_entropy(student.cls.seq_relationship(out.pooler_output), b["next_sentence_label"])
        fmt = L.feature_map_loss(th, proj(2, out.hidden_states[2]), standardize_maps=True)
    assert logs["kd"] == 0
    torch.testing.assert_close(logs["fmt"], 100 * fmt)
    torch.testing.assert_close(loss, 0.5 * mlm + nsp + 100 * fmt)
    loss.backward()
    assert proj.maps[2].weight.grad is not None and all(p.grad is None for p in teacher.parameters())


def test_pd_with_teacher_logits_is_unchanged_by_default():
    teacher = T.freeze(MobileBertForPreTraining(get_config("debug-ibbert", vocab_size=V)).eval())
    student = MobileBertForPreTraining(get_config("debug-mobilebert", vocab_size=V)).eval()
    b = batch()
    pd = S.DistillationLoss(teacher, 0.5)
    loss, logs = pd(S.Forward(student), b, totals(pd, b))
    assert "fmt" not in logs and logs["kd"] > 0 and set(totals(pd, b)) == {"mlm", "seq"}


# ------------------------------------------------------------------------------------------ the run's bridge
def test_bridge_keeps_the_equal_shape_run_as_it_was_and_bridges_a_bert_teacher():
    from mobilebert.recipes.train_bridge import describe, plan_bridge
    from mobilebert.recipes.train_settings import TrainSettings

    s = TrainSettings()
    same = plan_bridge(s, get_config("debug-ibbert"), get_config("debug-mobilebert"))
    assert (same.copy_embeddings, same.emb_stage, same.project, same.pd_fmt_weight) == (True, False, False, 0.0)
    assert same.layer_map == [1, 2, 3, 4] and same.teacher_heads == {"mlm": True, "nsp": True}
    bert = plan_bridge(s, bert_cfg(hidden=48, layers=6, heads=8), get_config("debug-mobilebert"))
    assert (bert.copy_embeddings, bert.emb_stage, bert.svd_init, bert.project) == (False, True, False, True)
    assert bert.layer_map == [2, 3, 5, 6]  # vocabularies 120 vs 30522: no SVD init
    s.kt.embedding_stage = False
    assert not plan_bridge(s, bert_cfg(hidden=48, layers=6, heads=8), get_config("debug-mobilebert")).emb_stage
    s.kt.embedding_stage, s.run.stages = True, ["kt"]
    forced = plan_bridge(s, get_config("debug-ibbert"), get_config("debug-mobilebert"))
    assert forced.emb_stage and forced.copy_embeddings
    lines = describe(bert, TrainSettings(), bert_cfg(hidden=48, layers=6, heads=8), get_config("debug-mobilebert"))
    assert "feature maps: 64 -> 48 through learned projections (trained in KT, not exported)" in lines
