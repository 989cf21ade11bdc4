"""Pre-training data: plain-text corpora -> sharded token arrays -> MLM + NSP batches (BERT's data pipeline).

    from mobilebert.data import prepare, PretrainingData, MaskingConfig
    prepare(["corpus/"], "vocab.txt", "shards/", workers=2)            # `mobilebert data prepare`
    data = PretrainingData("shards/", seq_len=128, masking=MaskingConfig(), seed=1234)
    batch = data.batch(step, batch_size, rank=0, world_size=1)         # dict of torch.LongTensor

corpus.py finds and reads the text (encoding fallback, document boundaries), shards.py tokenizes it into
memory-mapped shards, pretraining.py draws the examples; console.py is the `mobilebert data prepare|inspect` job
around them. See each module for the BERT sections it follows.
"""

from mobilebert.data.corpus import CorpusSource, EncodingReport, read_documents, resolve_corpus
from mobilebert.data.pretraining import IGNORE_INDEX, MaskingConfig, PretrainingData, truncation_counts
from mobilebert.data.shards import DEFAULT_SHARD_TOKENS, ShardedCorpus, load_manifest, prepare

__all__ = ["CorpusSource", "EncodingReport", "read_documents", "resolve_corpus", "IGNORE_INDEX", "MaskingConfig",
           "PretrainingData", "truncation_counts", "DEFAULT_SHARD_TOKENS", "ShardedCorpus", "load_manifest",
           "prepare"]
