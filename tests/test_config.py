"""Config: official JSON and HF config.json both ways; bad keys and impossible combinations named."""

import json

import pytest
import transformers as hf

from mobilebert import MobileBertConfig, get_config, list_presets
from mobilebert.errors import ConfigError

# google-research/mobilebert/config/uncased_L-24_H-128_B-512_A-4_F-4_OPT.json (values from the reference notes)
OFFICIAL_OPT = {
    "attention_probs_dropout_prob": 0.1, "hidden_act": "relu", "hidden_dropout_prob": 0.0, "embedding_size": 128,
    "hidden_size": 512, "initializer_range": 0.02, "intermediate_size": 512, "max_position_embeddings": 512,
    "num_attention_heads": 4, "num_hidden_layers": 24, "type_vocab_size": 2, "vocab_size": 30522,
    "trigram_input": True, "use_bottleneck": True, "intra_bottleneck_size": 128, "key_query_shared_bottleneck": True,
    "num_feedforward_networks": 4, "normalization_type": "no_norm", "classifier_activation": False,
}
# .../uncased_L-24_H-1024_B-512_A-4.json: the IB-BERT teacher (defaults left out, as in the file)
OFFICIAL_TEACHER = {
    "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "embedding_size": 128,
    "hidden_size": 512, "initializer_range": 0.02, "intermediate_size": 4096, "max_position_embeddings": 512,
    "num_attention_heads": 4, "num_hidden_layers": 24, "type_vocab_size": 2, "vocab_size": 30522,
    "trigram_input": True, "use_bottleneck": True, "intra_bottleneck_size": 1024,
}


def test_official_json_reads_to_presets(tmp_path):
    (tmp_path / "opt.json").write_text(json.dumps(OFFICIAL_OPT))
    assert MobileBertConfig.from_json_file(tmp_path / "opt.json") == get_config("mobilebert")
    (tmp_path / "teacher.json").write_text(json.dumps(OFFICIAL_TEACHER))
    teacher = MobileBertConfig.from_json_file(tmp_path / "teacher.json")
    # The official teacher keeps the default tanh pooler; our preset drops it (see presets.ibbert_large).
    assert teacher.replace(classifier_activation=False) == get_config("ibbert-large")
    assert teacher.true_hidden_size == 1024 and not teacher.key_query_shared_bottleneck


@pytest.mark.parametrize("name", list_presets())
def test_round_trips(tmp_path, name):
    cfg = get_config(name)
    cfg.save(tmp_path / "config.json")
    assert MobileBertConfig.from_json_file(tmp_path) == cfg
    cfg.save(tmp_path / "official.json", official=True)
    assert MobileBertConfig.from_json_file(tmp_path / "official.json") == cfg


def test_reads_transformers_config_json(tmp_path):
    hf.MobileBertConfig(num_labels=3, classifier_activation=False).save_pretrained(tmp_path)
    cfg = MobileBertConfig.from_json_file(tmp_path / "config.json")
    assert cfg.replace(id2label=None, num_labels=2) == get_config("mobilebert")
    assert cfg.num_labels == 3
    hf.BertConfig().save_pretrained(tmp_path / "bert")
    assert MobileBertConfig.from_json_file(tmp_path / "bert") == get_config("bert-base")


def test_transformers_reads_our_config(tmp_path):
    get_config("mobilebert-tiny", num_labels=5).save(tmp_path / "config.json")
    theirs = hf.AutoConfig.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "MobileBertConfig"
    assert theirs.use_bottleneck_attention and theirs.num_feedforward_networks == 2 and theirs.num_labels == 5
    assert theirs.true_hidden_size == 128


def test_classifier_pooling_is_written_only_when_mean(tmp_path):
    """The default ([CLS]) keeps config.json exactly what transformers writes; "mean" round-trips, and
    transformers still reads the file (it keeps the key as an attribute it does not use)."""
    get_config("mobilebert").save(tmp_path / "config.json")
    assert "classifier_pooling" not in json.loads((tmp_path / "config.json").read_text())
    cfg = get_config("mobilebert", classifier_pooling="mean")
    (tmp_path / "mean").mkdir()
    cfg.save(tmp_path / "mean" / "config.json")
    assert json.loads((tmp_path / "mean" / "config.json").read_text())["classifier_pooling"] == "mean"
    assert MobileBertConfig.from_json_file(tmp_path / "mean") == cfg
    assert hf.AutoConfig.from_pretrained(tmp_path / "mean").classifier_pooling == "mean"


@pytest.mark.parametrize("changes,key", [
    ({"classifier_pooling": "max"}, "classifier_pooling"),
    ({"num_attention_heads": 5}, "num_attention_heads"),
    ({"use_bottleneck_attention": True}, "key_query_shared_bottleneck"),
    ({"use_bottleneck": False}, "key_query_shared_bottleneck"),
    ({"hidden_act": "swish"}, "hidden_act"),
    ({"normalization_type": "batch_norm"}, "normalization_type"),
    ({"num_feedforward_networks": 0}, "num_feedforward_networks"),
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
    ({"hiden_size": 3}, "hiden_size"),
])
def test_bad_combinations_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=key):
        get_config("mobilebert").replace(**changes)


def test_bad_files_name_the_file_and_key(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({**OFFICIAL_OPT, "num_hiden_layers": 3}))
    with pytest.raises(ConfigError, match=r"a\.json.*num_hiden_layers"):
        MobileBertConfig.from_json_file(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"model_type": "mobilebert", "true_hidden_size": 64}))
    with pytest.raises(ConfigError, match="true_hidden_size"):
        MobileBertConfig.from_json_file(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"c\.json"):
        MobileBertConfig.from_json_file(tmp_path / "c.json")
    (tmp_path / "d.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="gpt2"):
        MobileBertConfig.from_json_file(tmp_path / "d.json")
    with pytest.raises(ConfigError, match="not found"):
        MobileBertConfig.from_json_file(tmp_path / "none.json")
    with pytest.raises(ConfigError, match="unknown preset"):
        get_config("mobilebert-huge")
