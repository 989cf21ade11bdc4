"""The run folder of `mobilebert train`: its checks before a run, its checkpoints, resume and exports.

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

from mobilebert.atomic import atomic_dir
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
    if proj is None:
        return
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
