"""Mixed precision: bf16 trains the full-size model; fp16 overflow is caught and named, not turned into NaN."""

import pytest
import torch

import mobilebert as mb
from mobilebert.model import PrecisionError


def pretraining_batch(cfg, batch=2, seq=128):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, cfg.vocab_size, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, ::7] = ids[:, ::7]
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                labels=labels, next_sentence_label=torch.tensor([0, 1]))


def test_full_size_bf16_forward_backward_cpu():
    cfg = mb.get_config("mobilebert")
    model = mb.MobileBertForPreTraining(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**pretraining_batch(cfg))
    assert out.seq_relationship_logits.dtype == torch.bfloat16  # autocast engaged
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) > 300 and all(torch.isfinite(g).all() for g in grads)


def _grow_activations(model, factor):
    """Trained MobileBERTs have large NoNorm gains (transformers#11327); emulate that by scaling them."""
    with torch.no_grad():
        for layer in model.base_model.encoder.layer:
            layer.output.bottleneck.LayerNorm.weight.mul_(factor)


def test_fp16_overflow_is_detected_and_named():
    cfg = mb.get_config("debug-mobilebert")
    model = mb.MobileBertForPreTraining(cfg).eval()
    batch = pretraining_batch(cfg, seq=16)
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.isfinite(model(**batch).loss)  # fresh weights stay in range
    _grow_activations(model, 40.0)
    with torch.no_grad():
        peaks = [h.abs().max().item() for h in model(**batch, output_hidden_states=True).hidden_states]
    first_bad = next(i for i, p in enumerate(peaks) if p > 65504)
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(PrecisionError, match=f"layer {first_bad} of 4.*bf16"):
        model(**batch)
    # the same weights are fine in bf16 (fp32's range)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(**batch).loss)


def test_info_activations_reports_where_fp16_overflows(tmp_path, vocab_file):
    import subprocess
    import sys

    cfg = mb.get_config("debug-mobilebert")
    model = mb.MobileBertForPreTraining(cfg)
    model.save_pretrained(tmp_path / "ok")
    _grow_activations(model, 40.0)
    model.save_pretrained(tmp_path / "big")
    for folder in ("ok", "big"):
        mb.Tokenizer.from_file(vocab_file).save(tmp_path / folder)
    run = lambda f: subprocess.run([sys.executable, "-m", "mobilebert", "info", str(tmp_path / f), "--activations",
                                    "a sentence to probe the activation range"], capture_output=True, text=True)
    ok, big = run("ok"), run("big")
    assert ok.returncode == 0 and "fits fp16" in ok.stdout, ok.stderr
    assert big.returncode == 0 and "fp16 overflows first at mobilebert.encoder.layer." in big.stdout, big.stderr
