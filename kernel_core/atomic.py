"""Crash-safe writes: a folder, or a set of files in a folder, appears whole or not at all.

Whatever is written goes first into a hidden staging folder (``.<name>.tmp-<pid>-<random>``) on the
same file system as its destination, is flushed to disk (``fsync`` of every file and folder), and is
then renamed into place. A rename is atomic, so a process killed at any instant (``kill -9``, a
power cut) leaves the previous content or the new one, never a mix that a reader would take for
finished. A killed writer leaves only hidden staging behind, which readers never look at and the
next writer into the same folder removes: only once the process that made it is gone, so two
writers never delete each other's work (a reused pid merely delays the removal).

Two shapes, one mechanism:

- :func:`atomic_folder` replaces a whole folder (a converted model, a training checkpoint).
- :func:`atomic_files` moves files into a folder that may hold other things: PEFT's
  ``save_pretrained`` writes into the folder it is given, and ``kcore finetune`` keeps its
  checkpoints beside its final adapter. One file is the *commit record* (``adapter_config.json``,
  the file loaders look for first): it is removed before the others are replaced and put back
  after them, so whoever finds it finds the other files of the same write.

A full disk (``ENOSPC``, or a full quota) becomes a :class:`~kernel_core.errors.DiskFullError`
naming the destination, after the staging is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from kernel_core.errors import DiskFullError

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<owner>.*)$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without error it replaces ``target``
    (:func:`publish_folder`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent)
    staging = hidden_staging(target)
    try:
        yield staging
        publish_folder(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise_if_disk_full(exc, target)
        raise


def hidden_staging(target: str | os.PathLike[str]) -> Path:
    """A new, empty hidden folder beside ``target`` to write into before :func:`publish_folder`;
    :func:`remove_stale` removes it once its maker is gone. For writers that cannot use
    :func:`atomic_folder`'s block, such as several processes filling one checkpoint."""
    return _new_hidden(Path(target), "tmp")


def publish_folder(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Flush ``staging`` to disk and rename it to ``target`` (replacing one that exists).

    An existing ``target`` is set aside, the staging renamed in, then the old one deleted. A writer
    killed between the two renames leaves no ``target``; :func:`remove_stale` puts the old one back.
    """
    staging, target = Path(staging), Path(target)
    _sync_tree(staging)
    aside = None
    if target.exists():
        aside = _hidden_name(target, "old")
        os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    _sync(target.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike[str], commit: str) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without error, each file written into it
    is moved into ``folder`` (created if need be), replacing any of the same name, ``commit`` last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale(folder)
    staging = _new_hidden(folder / commit, "tmp")
    try:
        yield staging
        _sync_tree(staging)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / commit)
        _sync(folder)  # the commit record is gone for good before any other file changes
        for name in sorted(path.name for path in staging.iterdir() if path.name != commit) + [commit]:
            os.replace(staging / name, folder / name)
        _sync(folder)
    except BaseException as exc:
        raise_if_disk_full(exc, folder)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace the file ``path`` with ``text`` (UTF-8): a reader sees the old file or the new one."""
    path = Path(path)
    with atomic_files(path.parent, path.name) as staging:
        (staging / path.name).write_text(text, encoding="utf-8")


def is_leftover(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is staging (or a set-aside folder) of this module, finished or not."""
    return _LEFTOVER.match(Path(path).name) is not None


def remove_stale(parent: str | os.PathLike[str]) -> None:
    """Remove what writers killed before finishing left in ``parent``, and put back a folder set
    aside whose replacement never landed. Leftovers of a live process are kept: it may be writing.
    Best effort: what cannot be removed (a read-only cache) stays, hidden, as harmless as before."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        leftover = _LEFTOVER.match(path.name)
        if leftover is None or _alive(leftover["owner"]):
            continue
        target = parent / leftover["name"]
        if leftover["kind"] == "old" and not target.exists():
            with contextlib.suppress(OSError):  # another cleaner was faster, or the folder is read-only
                os.replace(path, target)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _hidden_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _new_hidden(target: Path, kind: str) -> Path:
    path = _hidden_name(target, kind)
    path.mkdir()  # the umask applies, as for any folder the caller would make
    return path


def _alive(owner: str) -> bool:
    """Whether the process named in a leftover's name runs (a name without a pid: no)."""
    pid = owner.partition("-")[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            _sync(Path(root) / name)
        _sync(Path(root))


def raise_if_disk_full(exc: BaseException, target: Path) -> None:
    """Say which write a full disk stopped, in words a user acts on, rather than a bare ENOSPC
    (a :class:`DiskFullError` naming ``target``); any other exception is left alone."""
    if not (isinstance(exc, OSError) and exc.errno in _DISK_FULL):
        return
    error = DiskFullError(
        f"no space left on the device while writing {target}; the unfinished write was removed and "
        "nothing half-written is left there: free some space and run again"
    )
    error.errno = exc.errno  # for callers that test it; strerror and filename would replace str(error)
    raise error from exc
