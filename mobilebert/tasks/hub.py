"""GLUE splits from the Hugging Face hub (`datasets`), for machines that are online: the same `Example`s and
labels as the `download_glue_data.py` files that `mobilebert.tasks.glue` reads."""

from __future__ import annotations

from mobilebert.errors import UserError
from mobilebert.tasks.glue import Example, ReadResult, TaskSpec


def read_hf(task: TaskSpec, split: str, dataset: str = "glue") -> ReadResult:
    """Read a GLUE split from the Hugging Face hub (needs the `datasets` package and a network)."""
    try:
        import datasets  # optional dependency, only for machines that are online
    except ImportError:
        raise UserError("reading from the Hugging Face hub needs `pip install datasets`; "
                        "or point the data folder at a download_glue_data.py layout") from None
    if task.hf_config is None:
        raise UserError(f"task {task.name} has no Hugging Face GLUE config")
    hf_split = split.replace("dev", "validation")
    try:
        ds = datasets.load_dataset(dataset, task.hf_config, split=hf_split)
    except Exception as e:  # network, unknown split, ...
        raise UserError(f"hf:{dataset}/{task.hf_config} split {hf_split}: {e}") from None
    cols = {"cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
            "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
            "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2")}
    a, b = cols[task.hf_config]
    names = getattr(ds.features.get("label"), "names", None)
    examples = []
    for i, row in enumerate(ds):
        raw = row.get("label")
        if raw is None or (not task.is_regression and raw < 0):
            label = None                       # test splits carry -1
        elif task.is_regression:
            label = float(raw)
        elif names and names[raw] in task.labels:
            label = names[raw]                 # MNLI/QNLI/RTE: label names match GLUE's strings
        else:
            label = str(int(raw))              # 0/1 tasks: HF's ids are GLUE's labels
        examples.append(Example(str(row.get("idx", i)), row[a], row[b] if b else None, label, 0))
    return ReadResult(examples, f"hf:{dataset}/{task.hf_config}:{hf_split}")
