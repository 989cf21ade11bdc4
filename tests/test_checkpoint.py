"""Checkpoint files: mismatches named, unsafe pickles refused, writes atomic, .bin and prefixes handled."""

import errno
import os
import pickle

import pytest
import torch

import mobilebert as mb
from mobilebert import atomic
from mobilebert.checkpoint import read_state_dict
from mobilebert.heads import load_model
from mobilebert.errors import CheckpointError


def small(cls=mb.MobileBertForSequenceClassification, **kw):
    return cls(mb.get_config("debug-mobilebert", vocab_size=64, **kw))


def test_wrong_number_of_labels_is_named(tmp_path):
    small(num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"classifier\.\w+ has shape \(3.*expects \(2.*labels"):
        mb.MobileBertForSequenceClassification.from_pretrained(tmp_path, num_labels=2)


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    small(mb.MobileBertForPreTraining).save_pretrained(tmp_path)
    qa = mb.MobileBertForQuestionAnswering.from_pretrained(tmp_path)
    assert qa.load_report.missing == ["qa_outputs.weight", "qa_outputs.bias"]
    assert "cls.seq_relationship.weight" in qa.load_report.unexpected
    base = mb.MobileBertModel.from_pretrained(tmp_path)  # prefix stripped, heads ignored
    assert base.load_report.missing == []
    assert all(k.startswith("cls.") for k in base.load_report.unexpected)


def test_base_checkpoint_into_head_model(tmp_path):
    base = small(mb.MobileBertModel)
    base.save_pretrained(tmp_path)
    mlm = mb.MobileBertForMaskedLM.from_pretrained(tmp_path)
    assert torch.equal(mlm.mobilebert.encoder.layer[0].attention.self.query.weight,
                       base.encoder.layer[0].attention.self.query.weight)
    assert mlm.cls.predictions.decoder.weight is mlm.mobilebert.embeddings.word_embeddings.weight


def test_load_model_picks_architecture(tmp_path):
    small(num_labels=4).save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert isinstance(model, mb.MobileBertForSequenceClassification) and model.config.num_labels == 4


def test_pytorch_bin_loads_and_pickled_code_is_refused(tmp_path):
    model = small()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    model.config.save(tmp_path / "config.json")
    again = mb.MobileBertForSequenceClassification.from_pretrained(tmp_path)
    assert torch.equal(again.classifier.weight, model.classifier.weight)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.bin"):
        read_state_dict(tmp_path / "evil.bin")
    assert not (tmp_path / "pwned").exists()


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "empty")
    small().save_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"garbage, not tensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "bad")


def test_save_is_atomic(tmp_path, monkeypatch):
    first = small()
    first.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def crash(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "_write", crash)
    with pytest.raises(atomic.WriteError, match="model.safetensors: cannot write: no space left on device"):
        small().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
