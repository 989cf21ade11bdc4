"""Knowledge-transfer losses against values worked out by hand (padding masks included)."""

import math

import pytest
import torch

from mobilebert.distill.losses import (attention_ce_loss, attention_kl_loss, feature_map_loss, mean_var_loss,
                                       mlm_kd_loss, nsp_loss, pretraining_distillation_loss)

T = lambda x: torch.tensor(x, dtype=torch.float64)
ln = math.log


# ---------------------------------------------------------------------------------------- feature maps
def test_feature_map_mse_by_hand():
    teacher = T([[[1.0, 2.0], [3.0, 4.0]]])  # (B=1, S=2, N=2)
    student = torch.zeros(1, 2, 2, dtype=torch.float64)
    # token 0: (1 + 4)/2 = 2.5; token 1 (padding): (9 + 16)/2 = 12.5
    assert feature_map_loss(teacher, student, T([[1, 0]])).item() == pytest.approx(2.5)
    assert feature_map_loss(teacher, student).item() == pytest.approx(7.5)  # GR: padding included


def test_feature_map_standardized_by_hand():
    teacher = T([[[1.0, 3.0]]])  # mean 2, var 1 -> [-1, 1]
    assert feature_map_loss(teacher, T([[[0.0, 4.0]]]), standardize_maps=True).item() == pytest.approx(0.0, abs=1e-9)
    # a constant student standardises to [0, 0]: ((-1)^2 + 1^2)/2 = 1
    assert feature_map_loss(teacher, T([[[2.0, 2.0]]]), standardize_maps=True).item() == pytest.approx(1.0)


def test_feature_map_cls_weight_by_hand():
    teacher = T([[[1.0, 2.0], [3.0, 4.0]]])  # per token 2.5 ([CLS]) and 12.5
    student = torch.zeros(1, 2, 2, dtype=torch.float64)
    # [CLS] counts as 3 tokens; the normaliser stays the token count (2), so weight 1 is the plain mean
    assert feature_map_loss(teacher, student, cls_weight=3.0).item() == pytest.approx((3 * 2.5 + 12.5) / 2)
    assert feature_map_loss(teacher, student, cls_weight=0.0).item() == pytest.approx(12.5 / 2)
    assert feature_map_loss(teacher, student, cls_weight=1.0).item() == feature_map_loss(teacher, student).item()


# ------------------------------------------------------------------------------------------ attention
def test_attention_kl_by_hand_with_padding():
    # S=3, the third token is padding: its key is dropped and its query row does not count.
    t = T([[[[0.0, 0.0, 5.0], [ln(3), 0.0, 9.0], [1.0, 2.0, 3.0]]]])  # (B=1, A=1, S, S)
    s = T([[[[ln(3), 0.0, -2.0], [0.0, 0.0, 7.0], [9.0, 9.0, 9.0]]]])
    mask = T([[1, 1, 0]])
    row0 = 0.5 * ln(0.5 / 0.75) + 0.5 * ln(0.5 / 0.25)  # p=[.5,.5], q=[.75,.25]
    row1 = 0.75 * ln(0.75 / 0.5) + 0.25 * ln(0.25 / 0.5)  # p=[.75,.25], q=[.5,.5]
    assert attention_kl_loss(t, s, mask).item() == pytest.approx((row0 + row1) / 2)


def test_attention_kl_averages_over_heads():
    t = T([[[[0.0, 0.0]] * 2, [[0.0, 0.0]] * 2]])  # (1, A=2, 2, 2), uniform teacher
    s = T([[[[ln(3), 0.0]] * 2, [[0.0, 0.0]] * 2]])
    # head 0: both rows .5 ln(4/3); head 1: 0. Mean over 4 (row, head) pairs.
    assert attention_kl_loss(t, s).item() == pytest.approx(2 * 0.5 * ln(4 / 3) / 4)


def test_attention_ce_official_variant_by_hand():
    t = T([[[[0.0, 0.0], [0.0, 0.0]]]])
    s = T([[[[ln(3), 0.0], [0.0, 0.0]]]])
    row0 = -(0.5 * ln(0.75) + 0.5 * ln(0.25))
    row1 = ln(2)
    assert attention_ce_loss(t, s).item() == pytest.approx((row0 + row1) / 2)  # GR: all rows
    assert attention_ce_loss(t, s, T([[1, 0]])).item() == pytest.approx(row0)
    # CE = KL + teacher entropy (ln 2 per row here)
    assert attention_ce_loss(t, s).item() == pytest.approx(attention_kl_loss(t, s).item() + ln(2))


def test_attention_cls_weight_weights_the_cls_query_rows():
    t = T([[[[0.0, 0.0], [0.0, 0.0]]]])  # (B=1, A=1, S=2, S): row 0 is what [CLS] gathers
    s = T([[[[ln(3), 0.0], [0.0, ln(3)]]]])
    ce_row = -(0.5 * ln(0.75) + 0.5 * ln(0.25))  # both rows alike, so the weight shows in the sum only
    assert attention_ce_loss(t, s, cls_weight=4.0).item() == pytest.approx((4 + 1) * ce_row / 2)
    kl_row = 0.5 * ln(0.5 / 0.75) + 0.5 * ln(0.5 / 0.25)
    assert attention_kl_loss(t, s, T([[1, 1]]), cls_weight=4.0).item() == pytest.approx((4 + 1) * kl_row / 2)
    s2 = T([[[[ln(3), 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, ln(3)]]]])  # (1, A=2, 2, 2): head 0 row 0, head 1 row 1
    t2 = torch.cat([t, t], 1)
    # rows (head, query): (0, 0) and (1, 1) differ by kl_row; only (0, 0) is a [CLS] row
    assert attention_kl_loss(t2, s2, cls_weight=3.0).item() == pytest.approx((3 * kl_row + kl_row) / 4)


# ------------------------------------------------------------------------------------ mean / variance
def test_mean_var_by_hand():
    teacher = T([[[1.0, 3.0], [10.0, 10.0]]])  # means 2, 10; variances 1, 0
    student = T([[[0.0, 0.0], [0.0, 2.0]]])    # means 0, 1;  variances 0, 1
    beta, gamma = mean_var_loss(teacher, student, T([[1, 0]]))
    assert (beta.item(), gamma.item()) == (pytest.approx(4.0), pytest.approx(1.0))
    beta, gamma = mean_var_loss(teacher, student)
    assert (beta.item(), gamma.item()) == (pytest.approx((4 + 81) / 2), pytest.approx(1.0))


def test_mean_var_all_layer_statistics_gr_bug():
    layers = T([[[[1.0, 3.0]]], [[[0.0, 4.0]]]])  # (L=2, B, S, N): means 2, 2; variances 1, 4
    student = T([[[1.0, 1.0]]])                  # mean 1, variance 0
    beta, gamma = mean_var_loss(layers[1], student, teacher_all_layers=layers)
    assert beta.item() == pytest.approx(1.0) and gamma.item() == pytest.approx((1 + 4) / 2)


# ---------------------------------------------------------------------------------------- PD and NSP
def test_mlm_kd_by_hand():
    labels = torch.tensor([[-100, 2, 0]])
    student = T([[[100.0, -100.0, 5.0], [0.0, 0.0, 0.0], [ln(2), 0.0, 0.0]]])  # position 0 is not predicted
    teacher = T([[[-50.0, 50.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, ln(2)]]])
    mlm, kd = mlm_kd_loss(student, teacher, labels)
    assert mlm.item() == pytest.approx((ln(3) + ln(2)) / 2)
    # position 2: p_t = [.25, .25, .5], log q = [ln .5, ln .25, ln .25] -> .25 ln2 + .75 ln4 = 1.75 ln2
    assert kd.item() == pytest.approx((ln(3) + 1.75 * ln(2)) / 2)
    # gathered (M, V) logits give the same values
    keep = labels != -100
    mlm2, kd2 = mlm_kd_loss(student[keep], teacher[keep], labels)
    assert (mlm2.item(), kd2.item()) == (pytest.approx(mlm.item()), pytest.approx(kd.item()))


def test_pd_equals_official_soft_label_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (5,), generator=g)
    mlm, kd = mlm_kd_loss(s, t, y)
    soft = 0.5 * torch.nn.functional.one_hot(y, 7) + 0.5 * torch.softmax(t, -1)  # GR soft labels
    official = -(soft * torch.log_softmax(s, -1)).sum(-1).mean()
    nsp = torch.tensor(0.25, dtype=torch.float64)
    assert pretraining_distillation_loss(mlm, kd, nsp, 0.5).item() == pytest.approx(official.item() + 0.25)


def test_nsp_by_hand():
    assert nsp_loss(T([[0.0, 0.0], [ln(3), 0.0]]), torch.tensor([0, 1])).item() == pytest.approx((ln(2) + ln(4)) / 2)


# ------------------------------------------------------------------------------ reduction and gradients
def test_global_normalizer_splits_exactly():
    g = torch.Generator().manual_seed(1)
    t, s = torch.randn(4, 5, 6, generator=g), torch.randn(4, 5, 6, generator=g)
    mask = (torch.rand(4, 5, generator=g) > 0.3).long()
    mask[:, 0] = 1
    ts, ss = torch.randn(4, 2, 5, 5, generator=g), torch.randn(4, 2, 5, 5, generator=g)
    for fn, n_items in ((lambda a, b, m, n: feature_map_loss(a, b, m, normalizer=n), mask.sum()),
                        (lambda a, b, m, n: mean_var_loss(a, b, m, normalizer=n)[0], mask.sum())):
        full = fn(t, s, mask, None)
        halves = fn(t[:2], s[:2], mask[:2], n_items) + fn(t[2:], s[2:], mask[2:], n_items)
        assert halves.item() == pytest.approx(full.item(), rel=1e-6)
    pairs = mask.sum() * 2
    full = attention_kl_loss(ts, ss, mask)
    halves = attention_kl_loss(ts[:2], ss[:2], mask[:2], normalizer=pairs) + \
        attention_kl_loss(ts[2:], ss[2:], mask[2:], normalizer=pairs)
    assert halves.item() == pytest.approx(full.item(), rel=1e-6)


def test_padding_values_do_not_matter():
    g = torch.Generator().manual_seed(2)
    t, s = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    base = feature_map_loss(t, s, mask), mean_var_loss(t, s, mask)
    t2 = t.masked_fill(~mask.bool()[..., None], 1e4)
    assert feature_map_loss(t2, s, mask).item() == pytest.approx(base[0].item())
    assert [x.item() for x in mean_var_loss(t2, s, mask)] == pytest.approx([x.item() for x in base[1]])
    ts, ss = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    kl = attention_kl_loss(ts, ss, mask)
    ts2 = ts.masked_fill(~mask.bool()[:, None, None, :], 50.0).masked_fill(~mask.bool()[:, None, :, None], -7.0)
    assert attention_kl_loss(ts2, ss, mask).item() == pytest.approx(kl.item(), rel=1e-6)


def test_gradients_reach_student_only():
    g = torch.Generator().manual_seed(3)
    t = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    s = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    ts = torch.randn(2, 2, 3, 3, generator=g, requires_grad=True)
    ss = torch.randn(2, 2, 3, 3, generator=g, requires_grad=True)
    tl = torch.randn(5, 9, generator=g, requires_grad=True)
    sl = torch.randn(5, 9, generator=g, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    beta, gamma = mean_var_loss(t, s, mask)
    mlm, kd = mlm_kd_loss(sl, tl, torch.randint(0, 9, (5,), generator=g))
    total = (feature_map_loss(t, s, mask, standardize_maps=True) + attention_kl_loss(ts, ss, mask)
             + attention_ce_loss(ts, ss) + beta + gamma + mlm + kd)
    total.backward()
    assert t.grad is None and ts.grad is None and tl.grad is None
    assert s.grad.abs().sum() > 0 and ss.grad.abs().sum() > 0 and sl.grad.abs().sum() > 0
    assert torch.all(s.grad[0, 2] == 0)  # a padded token gets no gradient from the masked FMT, beta and gamma


def test_attention_losses_with_minus_inf_masked_keys():
    """bf16 attention scores carry -inf at padded keys; neither variant may turn that into nan."""
    t = T([[[[0.0, 0.0, float("-inf")], [ln(3), 0.0, float("-inf")], [1.0, 1.0, float("-inf")]]]])
    s = T([[[[ln(3), 0.0, float("-inf")], [0.0, 0.0, float("-inf")], [2.0, 1.0, float("-inf")]]]]).requires_grad_()
    mask = T([[1, 1, 0]])
    for fn in (attention_ce_loss, attention_kl_loss):
        for m in (None, mask):
            loss = fn(t, s, m)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(s.grad).all(), (fn.__name__, m)
            s.grad = None
    row0 = -(0.5 * ln(0.75) + 0.5 * ln(0.25))
    row1 = -(0.75 * ln(0.5) + 0.25 * ln(0.5))
    assert attention_ce_loss(t, s, mask).item() == pytest.approx((row0 + row1) / 2)
