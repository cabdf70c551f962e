"""Stage a merged model folder so that a half-written one is never shown and nothing else is lost.

`staged_output(out_dir, ...)` is a context manager that builds the model in OUT.partial and
renames it to OUT only when everything is written; on any error or cancel the partial folder
is deleted. An existing OUT is refused unless overwrite=True, and then it is replaced only
after the new model is complete. OUT may not be, contain or sit inside a folder the merge reads.

MergeDesk touches only folders it made itself, known by a marker file (MARKER, JSON: tool,
output name, pid, a random token per merge) that it writes into OUT.partial right after
creating it. mkdir (never exist_ok) is the lock, so a second merge into the same OUT, from
another process or another thread of this one, is refused ("being written by another merge")
instead of deleting the first one's folder. A replace runs four steps, each safe to be
killed after, because a marker always names the folders still in flight:

    1. OUT → OUT.old-TOKEN     (the partial's marker holds TOKEN)
    2. OUT.partial → OUT       (the marker travels along: OUT's marker now names OUT.old-TOKEN)
    3. delete OUT.old-TOKEN
    4. remove OUT's marker

What a kill left is repaired by the next merge into OUT. A marker inside OUT whose writer is
gone (killed in step 3 or 4; OUT is complete) gets its OUT.old-TOKEN deleted, then is removed.
A marked OUT.partial whose writer is gone is deleted, after its OUT.old-TOKEN, if any, is put
back as OUT (killed after step 1), or reported when OUT was made again meanwhile (the user
picks). A partial's marker is deleted last, so a kill while deleting it leaves it still marked.
A writer is alive when its pid runs (another process) or its token is in _LIVE (this process).

Never by name alone: an OUT.partial without a valid marker is not deleted, the merge is
refused naming it; a folder named OUT.old-N is touched only when a marker names it. Known
limits: a kill in the microseconds between mkdir and the marker (or between deleting the
marker and the empty folder) leaves an empty unmarked OUT.partial, refused like any other
until it is removed; a pid reused by an unrelated process makes a dead writer's partial look
alive, so the merge is refused, never wrongly deleted.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from core.errors import OutputError, OutputExists

MARKER = ".mergedesk-staging"  # inside OUT.partial (and OUT, steps 2-4): which merge made it
TOOL = "MergeDesk"
_LOCK = threading.Lock()  # threads share a pid: checking, creating and renaming folders go one at a time
_LIVE: set[str] = set()  # tokens of the merges this process is writing now


@contextmanager
def staged_output(out_dir: str | Path, *, overwrite: bool = False,
                  inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield OUT.partial to write into; on success it becomes OUT atomically, on failure it is removed."""
    out = Path(out_dir).expanduser().resolve()
    for folder in inputs:
        folder = folder.resolve()
        if out == folder or folder in out.parents or out in folder.parents:
            raise OutputError(f"output folder {out} overlaps input model folder {folder}: choose another output")
    partial = out.with_name(out.name + ".partial")
    token = f"{secrets.randbelow(10 ** 16):016d}"  # names OUT.old-TOKEN too
    with _LOCK:
        _recover_interrupted_run(out, partial)
        _refuse_existing(out, overwrite)
        _create(partial, out, token)
        _LIVE.add(token)
    try:
        try:
            yield partial
        except OSError as error:  # disk full, permissions, a vanished file: one line, nothing kept
            with _LOCK, suppress(OSError):
                _remove(partial)
            where = f": {error.filename}" if error.filename else ""
            raise OutputError(f"merge into {out} failed, nothing was kept: {error.strerror or error}{where}") from None
        except BaseException:
            with _LOCK, suppress(OSError):
                _remove(partial)
            raise
        with _LOCK:
            _publish(partial, out, token, overwrite)
    finally:
        _LIVE.discard(token)


def recover(out_dir: str | Path) -> None:
    """Repair what a killed writer into `out_dir` left, by the rules above (nothing left: nothing to do).

    For a caller that killed its own writer process (the demo build stops its training child this
    way) and reaped it, so that no OUT.partial outlives the job; the next staged_output would repair
    it too. Raises OutputError for a partial it must not touch (unmarked, or its writer still runs).
    """
    out = Path(out_dir).expanduser().resolve()
    with _LOCK:
        _recover_interrupted_run(out, out.with_name(out.name + ".partial"))


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputExists(f"output folder {out} already exists: choose another name or replace it")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder")


def _create(partial: Path, out: Path, token: str) -> None:
    """Make OUT.partial (the lock: it must not exist) and mark it as this merge's."""
    try:
        partial.mkdir(parents=True)
    except FileExistsError:  # made by another process since the recovery looked
        raise OutputError(f"{partial} is being written by another merge: wait for it or choose another "
                          "output folder") from None
    except OSError as error:
        raise OutputError(f"cannot create {partial}: {error.strerror or error}") from None
    try:
        _mark(partial, out, token)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)  # made a moment ago, under the lock: ours
        raise OutputError(f"cannot create {partial}: {error.strerror or error}") from None


def _publish(partial: Path, out: Path, token: str, overwrite: bool) -> None:
    """Put the complete OUT.partial in place as OUT (the steps of the module docstring)."""
    if out.exists() and not overwrite:  # made by someone else while the merge ran: not ours to replace
        with suppress(OSError):
            _remove(partial)
        raise OutputExists(f"output folder {out} appeared during the merge, nothing was kept: "
                           "choose another name or replace it")
    retired, replacing = _retired(out, token), out.exists()
    if replacing:
        os.replace(out, retired)
    os.replace(partial, out)
    if replacing:
        shutil.rmtree(retired)
    (out / MARKER).unlink()


def _recover_interrupted_run(out: Path, partial: Path) -> None:
    """Repair what a killed merge into `out` left; refuse rather than touch what MergeDesk did not make."""
    in_out = _marker(out, out)
    if in_out and not _alive(in_out):  # killed in step 3 or 4: OUT is the new model, the old one obsolete
        shutil.rmtree(_retired(out, in_out["token"]), ignore_errors=True)
        (out / MARKER).unlink()
    if not partial.exists():
        return
    mark = _marker(partial, out)
    if mark is None:
        raise OutputError(f"{partial} exists and was not written by MergeDesk: move it away or choose "
                          "another output folder")
    if _alive(mark):
        raise OutputError(f"{partial} is being written by another merge (process {mark['pid']}): wait for it "
                          "or choose another output folder")
    retired = _retired(out, mark["token"])
    if retired.is_dir() and out.exists():  # set aside by that merge, and OUT made again since
        raise OutputError(f"{retired} holds the {out.name} a killed merge set aside, and {out} exists again: "
                          "keep the one you want and delete the other")
    if retired.is_dir():  # killed after step 1: the old OUT comes back
        os.replace(retired, out)
    _remove(partial)


def _retired(out: Path, token: str) -> Path:
    return out.with_name(f"{out.name}.old-{token}")


def _mark(folder: Path, out: Path, token: str) -> None:
    record = {"tool": TOOL, "out": out.name, "pid": os.getpid(), "token": token}
    (folder / MARKER).write_text(json.dumps(record), encoding="utf-8")


def _marker(folder: Path, out: Path) -> dict | None:
    """The marker MergeDesk wrote into `folder` for a merge into `out`, or None (none, or not ours)."""
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    valid = (isinstance(record, dict) and record.get("tool") == TOOL and record.get("out") == out.name
             and type(record.get("pid")) is int and record["pid"] > 0
             and re.fullmatch(r"[0-9]{16}", str(record.get("token"))))
    return record if valid else None


def _remove(folder: Path) -> None:
    """Delete a partial MergeDesk made, its marker last: killed midway, it is still known as ours."""
    for item in folder.iterdir():
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        elif item.name != MARKER:
            item.unlink()
    (folder / MARKER).unlink(missing_ok=True)
    folder.rmdir()


def _alive(mark: dict) -> bool:
    """Whether the merge that wrote `mark` still runs (this process: its token is live)."""
    pid = mark["pid"]
    if pid == os.getpid():
        return mark["token"] in _LIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
