"""Atomic file and folder writes: the one way every writer of the project puts a file on disk (issue 10, item 5).

A crash, a SIGKILL or a full disk never leaves half a file under the final name: the data goes to a temporary
name in the same folder (so the rename stays on one file system), is flushed and fsync'd, and only then renamed
over the final path (`os.replace`, atomic on POSIX); the folder is fsync'd after the rename so the new name
survives a power cut. On any error the temporary is removed and the old file, if there was one, is untouched.

Disk errors a user can fix (full disk, quota, permissions, a read-only mount) become one `WriteError` naming the
final path, which the CLI prints as one line with exit status 2:
    RUN/teacher/model.safetensors: cannot write: no space left on device (nothing was written)

Permissions are the usual ones (files 0666 & ~umask, folders 0777 & ~umask), not mkstemp's 0600, so a model
written on a shared machine can be read by the people it is given to.

Temporaries are named `.<name>.<pid>-<random>.tmp`; those of a process that no longer runs (a SIGKILL) are
removed by the next write of the same path.

API:
    write_bytes(path, data: bytes) -> Path
    write_text(path, text) -> Path
    write_json(path, obj, **json_kwargs) / write_yaml(path, obj) -> Path
    atomic_path(path)     context manager: yields a temporary path for a library that writes by name
                          (onnx.save, ...); renamed into place when the block ends without an error
    atomic_dir(path)      context manager: yields an empty temporary folder, swapped into place at the end
    disk_errors(path, codes=None)
                          context manager: maps ENOSPC/EDQUOT/EFBIG/EROFS (SPACE_ERRORS) and EACCES/EPERM
                          to WriteError(path)
    temp_path(path) -> Path, commit(tmp, path)
                          the two halves of atomic_path, for writers whose temporary outlives one block
                          (exports that check the file before renaming it into place)
    as_write_error(OSError) -> WriteError | None
                          the CLI's safety net for writers that bypass this module: a disk error becomes
                          one line naming the final path (a temporary's name is mapped back to it)
    WriteError            a UserError

Test hook (crash-safety tests only): with MOBILEBERT_TEST_HOLD="<substring>@<n>" the n-th write whose final
path contains <substring> stops just before its rename, creates the file named by MOBILEBERT_TEST_HOLD_FILE
and sleeps, so a test can SIGKILL the process at exactly that point. `crash_point(label)` adds such a point
elsewhere (the checkpoint code marks the moment between its folder rename and its `latest` pointer update).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from mobilebert.errors import UserError

# errno -> what the user is told; anything else is a bug or a hardware problem and keeps its traceback.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}

# The errors that can only come from writing (EACCES/EPERM may come from reading an input too).
SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
_TMP = re.compile(r"^\.(.+)\.\d+-[0-9a-f]{8}\.tmp(\.\w+)?$")  # the names _tmp_name makes


class WriteError(UserError):
    """A file could not be written (full disk, quota, permissions, read-only); the message names the path."""

    def __init__(self, path, reason: str, inner: str = ""):
        self.path, self.reason = Path(path), reason
        where = f" (while writing {inner})" if inner else ""
        super().__init__(f"{path}: cannot write: {reason}{where}; nothing was written")


def _in_temporary(p: Path) -> bool:
    return any(_TMP.match(part) for part in p.parts)


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike, codes=None):
    """Turn a user-fixable OSError raised in the block into one WriteError naming `path`.

    codes: the errnos to map (default: all of _REASONS; SPACE_ERRORS around code that also reads inputs).
    A WriteError about a file inside one of our temporaries (a folder being built by atomic_dir) is renamed
    to `path` too: the user is told about the folder they asked for, not about a temporary name."""
    path = Path(path)
    try:
        yield
    except WriteError as e:
        if not _in_temporary(e.path) or _in_temporary(path):
            raise
        raise WriteError(path, e.reason, e.path.name) from None
    except OSError as e:
        reason = _REASONS.get(e.errno)
        if reason is None or (codes is not None and e.errno not in codes):
            raise
        inner = Path(e.filename).name if e.filename else ""
        inner = "" if inner == path.name or _TMP.match(inner) else inner
        raise WriteError(path, reason, inner) from None


def as_write_error(e: OSError) -> WriteError | None:
    """A WriteError naming the final path for a full disk (SPACE_ERRORS) raised anywhere; None for other errors."""
    if getattr(e, "errno", None) not in SPACE_ERRORS:
        return None
    reason = _REASONS[e.errno]
    path = Path(e.filename) if e.filename else Path("output")
    if _TMP.match(path.name):
        path = path.with_name(_TMP.match(path.name).group(1))
    return WriteError(path, reason)


def _tmp_name(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside `path` (not created; it ends in `path`'s suffix, for readers that go by
    it); stale ones of dead processes are removed first."""
    path = Path(path)
    _sweep(path)
    return _tmp_name(path, path.suffix)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """fsync `tmp` and rename it over `path` (then fsync the folder): the end of an atomic write."""
    tmp, path = Path(tmp), Path(path)
    with disk_errors(path):
        _fsync_path(tmp)
        _replace(tmp, path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(path: Path) -> None:
    """Remove temporaries of `path` left by processes that died (SIGKILL mid-write)."""
    try:
        for stale in path.parent.glob(f".{path.name}.*-*.tmp*"):
            pid = stale.name[len(path.name) + 2:].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    except OSError:
        pass  # a folder we cannot list: the write itself will report it


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for f in files:
            _fsync_path(Path(root) / f)
        _fsync_path(Path(root), directory=True)


_held: dict[str, int] = {}


def crash_point(path: str | os.PathLike) -> None:
    """The crash-test hook of the module docstring; a no-op unless MOBILEBERT_TEST_HOLD is set."""
    spec = os.environ.get("MOBILEBERT_TEST_HOLD")
    if not spec:
        return
    needle, _, nth = spec.rpartition("@")
    if needle not in str(path):
        return
    _held[needle] = _held.get(needle, 0) + 1
    if _held[needle] == int(nth):
        Path(os.environ["MOBILEBERT_TEST_HOLD_FILE"]).write_text(str(path), encoding="utf-8")
        while True:  # until the test kills us
            time.sleep(60)


def _replace(tmp: Path, path: Path) -> None:
    crash_point(path)
    os.replace(tmp, path)
    _fsync_path(path.parent, directory=True)


def _write(fh, data: bytes) -> None:
    """The one low-level write (tests make it raise ENOSPC)."""
    fh.write(data)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically, with the usual permissions; see the module docstring."""
    path = Path(path)
    with disk_errors(path):
        _sweep(path)
        tmp = _tmp_name(path)
        try:
            # O_EXCL + 0o666: the umask gives the usual permissions (mkstemp would give 0600)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with open(fd, "wb") as fh:
                _write(fh, data)
                fh.flush()
                os.fsync(fh.fileno())
            _replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, **kwargs) -> Path:
    return write_text(path, json.dumps(obj, **kwargs) + "\n")


def write_yaml(path: str | os.PathLike, obj) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path (not yet created) for a writer that takes a file name; rename it into place after."""
    path = Path(path)
    with disk_errors(path):
        _sweep(path)
        tmp = _tmp_name(path)
        try:
            yield tmp
            if not tmp.is_file():
                raise FileNotFoundError(f"{path}: the writer did not create {tmp.name}")
            _fsync_path(tmp)
            _replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield an empty temporary folder beside `path`; when the block succeeds it replaces `path` (a folder).

    Every file in it is fsync'd first. An existing `path` is moved aside, the new folder renamed in, and the
    old one deleted: a crash in between leaves the old folder under a temporary name, never a mix of both."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep(path)
        tmp = _tmp_name(path)
        tmp.mkdir()  # 0777 & ~umask (mkdtemp would give 0700)
        try:
            yield tmp
            _fsync_tree(tmp)
            crash_point(path)
            old = None
            if path.exists():
                old = _tmp_name(path)
                os.replace(path, old)
            os.replace(tmp, path)
            _fsync_path(path.parent, directory=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
