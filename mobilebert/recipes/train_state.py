"""The run folder of `mobilebert train`: its checks before a run, its checkpoints, resume and exports.

    start_run_folder  OUT and settings.yaml (from then on the folder is this run's), the corpus prepared into
                      OUT/data; a bad corpus leaves nothing behind
    resume_point      where a run starts: (newest checkpoint, its meta, index of its stage), or a fresh start
    check_out         a fresh run needs an absent or empty folder; `--resume` needs the run's settings.yaml,
                      unchanged apart from RESUME_FREE
    save_stage        one stage's training checkpoint (OUT/checkpoints/<stage>-<step>: weights, optimizer,
                      schedule, RNG, the loop's log window, and the KT width projections when there are any)
    load_projections  the projections back from a checkpoint (refused when it has none but the run needs them)
    export_model      a trained teacher or student in HF layout + vocab (OUT/teacher, OUT/student)
    discard_fresh_run a fresh run that stops before its first checkpoint leaves no folder behind (finetune's too)
The format is the engine's (engine/checkpoint.py); a resumed stage repeats the uninterrupted run bit for bit on
CPU (paper §4's runs are long: they are stopped and continued).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mobilebert.atomic import SPACE_ERRORS, atomic_dir, disk_errors, write_yaml
from mobilebert.engine import checkpoint as C
from mobilebert.engine import distributed as D
from mobilebert.errors import CheckpointError, ConfigError
from mobilebert.recipes.settings import check_new_folder, check_unchanged

# Settings that may change between a run and its --resume (they do not change the numbers).
RESUME_FREE = {"run.progress", "run.tensorboard", "run.threads", "run.save_every", "run.keep_checkpoints",
               "data.workers", "run.compile", "run.allow_large", "data.sts_dev"}


def check_out(settings, out: Path, resume: bool) -> None:
    """run.out: empty or absent for a fresh run; a run with the same settings for --resume."""
    run_file = out / "settings.yaml"
    if resume:
        if not run_file.is_file():
            raise ConfigError(f"run.out: {out} holds no run to resume (no settings.yaml)")
        check_unchanged(settings, run_file, RESUME_FREE)
    else:
        check_new_folder("run.out", out)


def start_run_folder(out: Path, settings: dict, data, shards: Path, tokenizer, corpus_bytes: int) -> None:
    """Rank 0, after every check passed: OUT/settings.yaml, then `data.corpus` tokenized into `shards` (skipped
    when they hold a manifest already: a resumed run, or a run given data.shards)."""
    fresh = not out.exists()
    with disk_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    # settings.yaml first: from here on the folder is this run's, and --resume can pick it up.
    write_yaml(out / "settings.yaml", settings)
    try:
        if data.corpus and not (shards / "manifest.json").is_file():
            from mobilebert.data.shards import prepare
            print(f"preparing {', '.join(data.corpus)} -> {shards}", flush=True)
            # Small corpora tokenize faster in-process than through a worker pool.
            workers = 1 if corpus_bytes < 64 << 20 else None
            with disk_errors(shards, SPACE_ERRORS):
                prepare(data.corpus, tokenizer, shards, workers=workers, skip_bad_files=data.skip_bad_files)
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)  # bad corpus: leave nothing behind
        raise


def resume_point(out: Path, resume: bool, stage_names: list[str]) -> tuple[Path | None, dict | None, int]:
    """(checkpoint, its meta {"stage", "step", ...}, index of that stage in the plan); (None, None, 0) when fresh."""
    latest = C.latest_checkpoint(out) if resume else None
    meta = C.read_meta(latest) if latest else None
    return latest, meta, stage_names.index(meta["stage"]) if meta else 0


def save_stage(out: Path, stage_name: str, step: int, loop_state: dict, *, model, optimizer, scheduler, proj,
               settings: dict, batch_size: int, keep: int) -> None:
    """The checkpoint `engine.train_loop` asks for (every run.save_every steps, on a signal, at the stage's end)."""
    extra = {"loop": loop_state}
    if proj is not None:  # in the training checkpoint only: the exported student never holds them
        extra["kt_projections"] = {k: v.detach().cpu() for k, v in proj.state_dict().items()}
    C.save_checkpoint(out, C.checkpoint_name(stage_name, step), model=model, optimizer=optimizer,
                      scheduler=scheduler, step=step, stage=stage_name, data_position=step * batch_size,
                      settings=settings, extra=extra, keep=keep)


def load_projections(proj, state: dict, ckpt: Path, widths: tuple[int, int]) -> None:
    """The width projections saved with the checkpoint `state` (read from `ckpt`); widths: (student, teacher)."""
    saved = state["extra"].get("kt_projections")
    if saved is None:
        raise CheckpointError(f"{ckpt}: holds no kt_projections, but this run projects feature maps "
                              f"({widths[0]} -> {widths[1]})")
    proj.load_state_dict(saved)


def export_model(model, out: Path, name: str, shards: Path) -> Path:
    """OUT/<name> in HF layout (+ the data's vocab), written beside and renamed into place (rank 0)."""
    final = out / name
    if D.is_main():
        with atomic_dir(final) as tmp:
            D.unwrap(model).save_pretrained(tmp)
            for f in ("vocab.txt", "tokenizer.json"):
                if (shards / f).is_file():
                    shutil.copy(shards / f, tmp / f)
    D.barrier()
    return final


def discard_fresh_run(out: Path, existed: bool) -> None:
    """After a fresh run failed before its first checkpoint: remove its folder (or empty the user's empty
    folder again), so it never blocks the corrected command."""
    if D.is_main() and out.is_dir() and not (out / "checkpoints" / "latest").is_file():
        if existed:
            for p in list(out.iterdir()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
