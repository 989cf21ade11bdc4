"""`kt.input=clean` (distill/steps.py): the transfer terms read the original tokens, the MLM and NSP terms the
masked batch, in the same step; `masked` (GR) is unchanged.

Each loss run with clean input on a masked batch must equal the masked-input loss run on the batch with its
tokens restored (transfer terms) plus the masked-input terms (MLM, NSP, KD), in value and in gradient.
"""

import copy

import pytest
import torch

from mobilebert.distill import steps as S
from mobilebert.heads import MobileBertForPreTraining
from mobilebert.presets import get_config
from mobilebert.recipes.train_settings import KtSettings

L = 4  # debug-ibbert depth
MASK_ID = 103


def masked_batch(B: int = 3, S_: int = 12) -> dict:
    """A batch with MLM masking: positions 2, 5 and 9 of each row hold [MASK], their tokens in `labels`."""
    g = torch.Generator().manual_seed(3)
    original = torch.randint(1000, 3000, (B, S_), generator=g)
    labels = torch.full_like(original, -100)
    ids = original.clone()
    for p in (2, 5, 9):
        labels[:, p], ids[:, p] = original[:, p], MASK_ID
    types = torch.zeros(B, S_, dtype=torch.long)
    types[:, S_ // 2:] = 1
    return {"input_ids": ids, "attention_mask": torch.ones(B, S_, dtype=torch.long), "token_type_ids": types,
            "labels": labels, "next_sentence_label": torch.tensor([0, 1, 0])[:B]}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    teacher = MobileBertForPreTraining(get_config("debug-ibbert")).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # a student that differs from the teacher everywhere
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    return teacher, student


def settings(kind: str) -> KtSettings:
    kt = KtSettings()
    kt.input = kind
    return kt


def run(fn, student, b) -> tuple[dict, dict]:
    """(float logs incl. "loss", gradient of every student parameter) of one step of `fn` on batch `b`."""
    student.zero_grad()
    loss, logs = fn(S.Forward(student), b, fn.denominators(b))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return {"loss": loss.item(), **{k: v.item() for k, v in logs.items()}}, grads


def assert_grads_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-6, msg=n)


def add_grads(a: dict, b: dict) -> dict:
    return {n: a.get(n, 0) + b.get(n, 0) for n in a.keys() | b.keys()}


def test_unmasked_restores_the_tokens_and_drops_the_labels():
    b = masked_batch()
    clean = S.unmasked(b)
    assert (clean["input_ids"] != MASK_ID).all() and (clean["labels"] == -100).all()
    assert torch.equal(clean["input_ids"][:, 2], b["labels"][:, 2])
    assert torch.equal(clean["input_ids"][:, 3], b["input_ids"][:, 3])  # unmasked positions untouched
    d = S.doubled(b)
    assert d["input_ids"].shape == (6, 12) and torch.equal(d["input_ids"][:3], b["input_ids"])
    assert torch.equal(d["input_ids"][3:], clean["input_ids"]) and (d["labels"][3:] == -100).all()
    assert torch.equal(b["input_ids"][:, 2], torch.full((3,), MASK_ID))  # the caller's batch is not changed


@pytest.mark.parametrize("layers,depth", [([2], 2), (list(range(1, L + 1)), None)], ids=["pkt-2", "jkt"])
def test_clean_transfer_equals_masked_transfer_on_the_original_tokens(models, layers, depth):
    teacher, student = models
    b = masked_batch()
    fn = lambda kind: S.TransferLoss(teacher, settings(kind), layers, L, depth=depth)
    clean, g_clean = run(fn("clean"), student, b)
    ref, g_ref = run(fn("masked"), student, S.unmasked(b))
    masked, _ = run(fn("masked"), student, b)
    assert clean == pytest.approx(ref, rel=1e-5)
    assert_grads_close(g_clean, g_ref)
    assert abs(clean["fmt"] - masked["fmt"]) > 1e-4 * masked["fmt"]  # the input really changed


def test_akt_clean_is_transfer_on_clean_plus_pd_on_masked(models):
    """AKT: one student forward on the doubled batch; its loss and gradient are the two parts' sums."""
    teacher, student = models
    b = masked_batch()
    layers = list(range(1, L + 1))
    pd = lambda: S.DistillationLoss(teacher, 0.5)
    clean, g_clean = run(S.TransferLoss(teacher, settings("clean"), layers, L, pd=pd()), student, b)
    transfer, g_transfer = run(S.TransferLoss(teacher, settings("masked"), layers, L), student, S.unmasked(b))
    distil, g_distil = run(pd(), student, b)
    for k in ("fmt", "at", "beta", "gamma"):
        assert clean[k] == pytest.approx(transfer[k], rel=1e-5), k
    for k in ("mlm", "kd", "nsp", "mlm_acc"):
        assert clean[k] == pytest.approx(distil[k], rel=1e-5), k
    assert clean["loss"] == pytest.approx(transfer["loss"] + distil["loss"], rel=1e-5)
    assert_grads_close(g_clean, add_grads(g_transfer, g_distil))


@pytest.mark.parametrize("logits", [True, False], ids=["teacher-logits", "no-mlm-head"])
def test_final_stage_feature_maps_on_clean_tokens(models, logits):
    """The final stage with last-layer feature maps: MLM (and KD) on the masked rows, the maps on the clean."""
    teacher, student = models
    b = masked_batch()
    pd = lambda clean: S.DistillationLoss(teacher, 0.5, teacher_logits=logits, fmt_weight=100.0,
                                          fmt_layers=(L, L), clean_input=clean)
    clean, g_clean = run(pd(True), student, b)
    maps, g_maps = run(S.TransferLoss(teacher, fmt_only(), [L], L), student, S.unmasked(b))
    terms, g_terms = run(S.DistillationLoss(teacher, 0.5, teacher_logits=logits), student, b)
    # TransferLoss divides by the layer count L; the final stage's term is the layer's own
    assert clean["fmt"] == pytest.approx(maps["fmt"] * L, rel=1e-5)
    for k in ("mlm", "kd", "nsp"):
        assert clean[k] == pytest.approx(terms[k], rel=1e-5), k
    assert_grads_close(g_clean, add_grads({n: g * L for n, g in g_maps.items()}, g_terms))
    masked, _ = run(pd(False), student, b)
    assert masked["mlm"] == pytest.approx(clean["mlm"], rel=1e-6) and masked["fmt"] != pytest.approx(clean["fmt"])


def test_final_stage_cls_weight(models):
    """kt.cls_weight reaches the final stage's feature maps exactly as it does the layer-wise ones."""
    teacher, student = models
    b = masked_batch()
    kt = fmt_only()
    kt.cls_weight = 7.0
    final, _ = run(S.DistillationLoss(teacher, 0.5, fmt_weight=100.0, fmt_layers=(L, L), cls_weight=7.0), student, b)
    maps, _ = run(S.TransferLoss(teacher, kt, [L], L), student, b)
    plain, _ = run(S.DistillationLoss(teacher, 0.5, fmt_weight=100.0, fmt_layers=(L, L)), student, b)
    assert final["fmt"] == pytest.approx(maps["fmt"] * L, rel=1e-5) and final["fmt"] > plain["fmt"] * 1.01


def fmt_only() -> KtSettings:
    kt = settings("masked")
    kt.at.weight, kt.mean_var.beta, kt.mean_var.gamma = 0.0, 0.0, 0.0
    return kt
