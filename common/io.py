"""Reading records and writing files so that a crash never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common.errors import UserError


def read_records(path: str | Path, required: Sequence[str] = ()) -> list[dict]:
    """Read a JSON array or a JSON-Lines file of objects; every record must carry the `required` fields.

    Errors name the file, the line and the field, so a bad record in a 4,000-row split is found at once.
    """
    return [rec for _, rec in read_located(path, required)]


def read_located(path: str | Path, required: Sequence[str] = ()) -> list[tuple[str, dict]]:
    """read_records, each record with where it sits (`file:line` in JSON Lines, `file: record k` in an array), for
    the checks a caller makes of its values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    records: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        # Line numbers of a pretty-printed array are unknown after parsing; report the record's position instead.
        records = [(i + 1, item) for i, item in enumerate(items)]
        where = "record"
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
        where = "line"
    if not records:
        raise UserError(f"{path}: no records (empty dataset)")
    out = []
    for pos, rec in records:
        loc = f"{path}:{pos}" if where == "line" else f"{path}: record {pos}"
        if not isinstance(rec, dict):
            raise UserError(f"{loc}: expected a JSON object, got {type(rec).__name__}")
        for name in required:
            if name not in rec:
                raise UserError(f"{loc}: field '{name}' missing")
        out.append((loc, rec))
    return out


# errno values of a write that failed for lack of space or permission, not because of a bug.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def write_error(path: str | Path, e: BaseException) -> UserError:
    """One line for a write that failed: the path and the reason. A read-only or forbidden place is said as such;
    some writers (torch.save, safetensors) hide a full disk behind their own message, so the free space is checked
    too (call this before removing the partial files)."""
    code = getattr(e, "errno", None)
    if code == errno.EROFS:
        return UserError(f"cannot write {path}: read-only file system")
    if code in (errno.EACCES, errno.EPERM):
        return UserError(f"cannot write {path}: permission denied")
    why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0]
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        return UserError(f"cannot write {path}: {existing} is read-only or not writable")
    free = shutil.disk_usage(existing).free
    if free < 2**20 and "No space left" not in why:
        why = f"no space left on device ({free} bytes free): {why}"
    return UserError(f"cannot write {path}: {why}")


def failed_write(path: str | Path, e: BaseException) -> UserError | None:
    """The one-line error for `e` if it is a write that failed for lack of space or permission, else None (a bug or a
    UserError of its own, to be raised as it is). Call it before the partial files are removed."""
    if isinstance(e, UserError):
        return None
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        return write_error(path, e)
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return write_error(path, e) if shutil.disk_usage(existing).free < 2**20 else None


def writer_tag() -> str:
    """`<pid>@<host>` of this process. Temp and trash names end in it, so a later start can tell the leftovers of a
    writer that died (same host, pid gone) from those of one still at work, here or on another node of a cluster."""
    return f"{os.getpid()}@{socket.gethostname()}"


def tag_of(name: str) -> str:
    """The writer tag a temp name ends in (`...-<pid>@<host>`, a host may hold dashes; or an older `...-<pid>`)."""
    head, at, host = name.rpartition("@")
    return f"{head.rsplit('-', 1)[-1]}@{host}" if at else name.rsplit("-", 1)[-1]


def writer_alive(tag: str) -> bool:
    """Whether the writer named by a tag (`<pid>@<host>`, or a bare `<pid>`) may still be writing. A process on
    another host cannot be asked, so it counts as alive; so does anything that is not a tag."""
    pid, _, host = tag.partition("@")
    if not pid.isdigit() or (host and host != socket.gethostname()):
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    return True


def remove_dead_leftovers(parent: Path, pattern: str) -> None:
    """Remove the entries of `parent` matching `pattern` (a glob ending in `-*`) whose writer tag names a dead
    process: what a killed writer left, never a live writer's work in progress."""
    for leftover in Path(parent).glob(pattern):
        if not writer_alive(tag_of(leftover.name)):
            _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (write a file or make a directory there); it takes `path`'s place only if
    the block finishes without error, so `path` is always complete or absent. A directory already at `path` is
    renamed aside, replaced, then deleted (never deleted first). Temporary names carry the writer's tag: what a
    killed writer left is removed at the next write, and a previous version it had renamed aside is put back. A full
    disk or a read-only or forbidden place is one UserError naming the path, with the partial output removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise write_error(path, e) from None
    for old in path.parent.glob(f".{path.name}.old-*"):
        if not path.exists() and not writer_alive(tag_of(old.name)):
            os.rename(old, path)  # killed between its two renames: the previous version is the complete one
    remove_dead_leftovers(path.parent, f".{path.name}.old-*")
    remove_dead_leftovers(path.parent, f".{path.name}.tmp-*")
    tmp = path.with_name(f".{path.name}.tmp-{writer_tag()}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            old = path.with_name(f".{path.name}.old-{writer_tag()}")
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - safetensors and torch.save report a full disk in their own types
        error = failed_write(path, e)
        if error is None:
            raise
        raise error from None
    finally:
        _remove(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (tmp file + rename)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
