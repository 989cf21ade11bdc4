"""Model behaviour beyond transformers parity: the teacher's GR semantics, SDPA vs explicit attention,
stage-truncated forward passes, gradient checkpointing, and input checks."""

import pytest
import torch

import mobilebert as mb
from mobilebert.errors import UserError


def batch(cfg, b=2, s=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, cfg.vocab_size, (b, s), generator=g)
    mask = torch.ones_like(ids)
    mask[0, s - 3:] = 0
    return dict(input_ids=ids, attention_mask=mask)


def test_ibbert_teacher_reads_inter_block_features():
    cfg = mb.get_config("debug-ibbert")
    model = mb.MobileBertModel(cfg)
    attn = model.encoder.layer[0].attention.self
    # IB-BERT (official semantics, which transformers cannot build): Q, K and V project 64 -> 128.
    assert attn.query.weight.shape == attn.key.weight.shape == attn.value.weight.shape == (128, 64)
    out = model(**batch(cfg), output_hidden_states=True, output_attentions=True)
    assert all(h.shape[-1] == 64 for h in out.hidden_states)
    assert out.attentions[0].shape == (2, 4, 12, 12)
    # Inter-block width and heads fit the debug student, as knowledge transfer needs.
    student = mb.get_config("debug-mobilebert")
    assert student.hidden_size == cfg.hidden_size and student.num_attention_heads == cfg.num_attention_heads


@pytest.mark.parametrize("preset", ["debug-mobilebert", "debug-ibbert", "debug-bert"])
def test_sdpa_equals_explicit_attention(preset):
    cfg = mb.get_config(preset)
    model = mb.MobileBertModel(cfg).double().eval()
    b = batch(cfg)
    fast = model(**b)
    slow = model(**b, output_attention_scores=True, output_attentions=True)
    assert torch.allclose(fast.last_hidden_state, slow.last_hidden_state, rtol=1e-12, atol=1e-12)
    probs, scores = slow.attentions[0], slow.attention_scores[0]
    assert torch.allclose(probs, torch.softmax(scores, -1))
    assert probs[0, :, :, -3:].abs().max() == 0  # padded keys get no weight
    assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)))


def test_truncated_forward_matches_full_prefix():
    cfg = mb.get_config("debug-mobilebert")
    model = mb.MobileBertForPreTraining(cfg).eval()
    full = model(**batch(cfg), output_hidden_states=True)
    part = model(**batch(cfg), output_hidden_states=True, num_layers=2)
    assert len(part.hidden_states) == 3
    for a, b in zip(part.hidden_states, full.hidden_states[:3]):
        assert torch.equal(a, b)


def test_gradient_checkpointing_same_gradients():
    cfg = mb.get_config("debug-mobilebert", num_labels=3, attention_probs_dropout_prob=0.0)
    model = mb.MobileBertForSequenceClassification(cfg).train()
    b = {**batch(cfg), "labels": torch.tensor([0, 2])}
    model(**b).loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.base_model.gradient_checkpointing = True
    model(**b).loss.backward()
    for n, p in model.named_parameters():
        if n in want:
            assert torch.allclose(p.grad, want[n], atol=1e-7), n


def test_dropout_only_in_training():
    cfg = mb.get_config("debug-ibbert")  # hidden dropout 0.1
    model = mb.MobileBertModel(cfg)
    b = batch(cfg)
    model.eval()
    assert torch.equal(model(**b).last_hidden_state, model(**b).last_hidden_state)
    model.train()
    assert not torch.equal(model(**b).last_hidden_state, model(**b).last_hidden_state)


def test_pooler_with_and_without_activation():
    cfg = mb.get_config("debug-mobilebert")
    raw = mb.MobileBertModel(cfg)
    out = raw(**batch(cfg))
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])  # released config: raw [CLS]
    tanh = mb.MobileBertModel(cfg.replace(classifier_activation=True))
    assert tanh(**batch(cfg)).pooler_output.abs().max() <= 1


def pair_batch(cfg, pairs, s=16):
    """(a, b) word-id lists -> a padded pair batch [CLS] a [SEP] b [SEP] (b None: a single sentence)."""
    cls_id, sep_id = 2, 3
    ids, seg, mask = (torch.zeros(len(pairs), s, dtype=torch.long) for _ in range(3))
    for i, (a, b) in enumerate(pairs):
        row_a = [cls_id, *a, sep_id]
        row = row_a + ([*b, sep_id] if b else [])
        ids[i, :len(row)], seg[i, len(row_a):len(row)], mask[i, :len(row)] = torch.tensor(row), 1, 1
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=seg)


@pytest.mark.parametrize("preset,num_labels", [("debug-mobilebert", 3), ("debug-bert", 3), ("debug-mobilebert", 1)])
def test_siamese_classifier_encodes_each_sentence_alone(preset, num_labels):
    """classifier_pooling="siamese": u and v are the mean states of [CLS] a [SEP] and [CLS] b [SEP], each run alone
    through the encoder (sentence-transformers' bi-encoder); classes read [u, v, |u - v|, u * v], a regression score
    is an affine map of cos(u, v) that `fit_cosine_range` starts at the label range; a single sentence pairs with
    itself; the loss reaches every parameter (none idle under DDP)."""
    cfg = mb.get_config(preset).replace(classifier_pooling="siamese", num_labels=num_labels)
    torch.manual_seed(0)
    model = mb.MobileBertForSequenceClassification(cfg).eval()
    assert model.base_model.pooler is None
    assert model.classifier.in_features == (1 if num_labels == 1 else 4 * cfg.hidden_size)
    pairs = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14, 15]), ([16, 17], None)]
    if num_labels == 1:
        model.fit_cosine_range(-1.0, 4.0)
        labels = torch.tensor([1.0, 2.0, 3.0])
    else:
        labels = torch.tensor([0, 2, 1])
    out = model(**pair_batch(cfg, pairs), labels=labels)

    def alone(words):  # (H,) mean state of [CLS] words [SEP], encoded by itself
        return model.base_model(torch.tensor([[2, *words, 3]])).last_hidden_state[0].mean(0)

    want = []
    for a, b in pairs:
        u = alone(a)
        v = alone(b) if b else u
        want.append(-1.0 + 5.0 * torch.cosine_similarity(u, v, dim=0)[None] if num_labels == 1
                    else model.classifier(torch.cat([u, v, (u - v).abs(), u * v])))
    torch.testing.assert_close(out.logits, torch.stack(want), rtol=1e-5, atol=1e-5)
    if num_labels == 1:
        assert out.logits[2].item() == pytest.approx(4.0, abs=1e-5)  # a sentence against itself: cosine 1
    out.loss.backward()
    idle = [n for n, p in model.named_parameters() if p.grad is None]
    assert not idle, idle


@pytest.mark.parametrize("preset", ["debug-mobilebert", "debug-bert"])
def test_mean_pooling_reads_only_real_tokens(preset):
    """classifier_pooling="mean": the pooler averages the last-layer states over real tokens, so a sentence pools
    alike however far it is padded, and the loss reaches every real token's state and no pad's."""
    cfg = mb.get_config(preset).replace(classifier_pooling="mean")
    torch.manual_seed(0)
    model = mb.MobileBertForSequenceClassification(cfg).eval()
    b = batch(cfg)
    b["input_ids"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, cfg.pad_token_id)  # as a tokenizer pads
    out = model(**b)
    h, m = out.last_hidden_state, b["attention_mask"]
    want = torch.stack([h[i, m[i].bool()].mean(0) for i in range(len(h))])  # (B, H), row by row
    want = torch.tanh(model.base_model.pooler.dense(want)) if cfg.classifier_activation else want
    torch.testing.assert_close(out.pooler_output, want)
    # The first sentence alone, without its pads: the same pooled vector (the trigram convolution sees the pad
    # id's zero embedding as the zeros past a sequence's end).
    real = int(m[0].sum())
    alone = model(input_ids=b["input_ids"][:1, :real])
    torch.testing.assert_close(alone.pooler_output, out.pooler_output[:1], rtol=1e-5, atol=1e-5)
    # Gradients: every real position of h gets one, the pads none.
    h_leaf = out.last_hidden_state.detach().requires_grad_(True)
    (logits,) = model.head_outputs(h_leaf, model.base_model.pooler(h_leaf, m), b["input_ids"].shape)
    logits.sum().backward()
    per_token = h_leaf.grad.abs().sum(-1)  # (B, S)
    assert bool((per_token[m.bool()] > 0).all()) and bool((per_token[~m.bool()] == 0).all())
    # [CLS] pooling on the same weights reads position 0 only.
    cls = mb.MobileBertForSequenceClassification(cfg.replace(classifier_pooling="cls"))
    cls.load_state_dict(model.state_dict())
    assert not torch.allclose(cls.eval()(**b).logits, out.logits)


def test_sparse_mlm_equals_dense_loss():
    cfg = mb.get_config("debug-mobilebert")
    model = mb.MobileBertForPreTraining(cfg).eval()
    b = batch(cfg)
    labels = torch.full_like(b["input_ids"], -100)
    labels[:, 3] = 5
    labels[1, 7] = 9
    dense = model(**b, labels=labels)
    sparse = model(**b, labels=labels, sparse_mlm=True)
    assert sparse.prediction_logits.shape == (3, cfg.vocab_size)
    assert torch.allclose(dense.mlm_loss, sparse.mlm_loss, atol=1e-6)


def test_input_checks():
    cfg = mb.get_config("debug-mobilebert", max_position_embeddings=16)
    model = mb.MobileBertModel(cfg)
    with pytest.raises(UserError, match="longer than the model's max_position_embeddings=16"):
        model(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq"):
        model(torch.ones(17, dtype=torch.long))


def test_multiple_choice_shapes():
    cfg = mb.get_config("debug-mobilebert")
    model = mb.MobileBertForMultipleChoice(cfg)
    out = model(torch.randint(1, 100, (2, 3, 8)), labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
