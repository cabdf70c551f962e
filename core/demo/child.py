"""Run one generator function in a fresh Python process and stream what it yields back.

    run = in_child(build_model, job, cancel=cancel, stopped="build stopped", label="training general-ce")
    for step in run: ...        # each item build_model(job) yields, pickled across
    # its return value ends `run` (StopIteration.value); a MergeDeskError it raises is raised here

Why: training a model leaves the process that ran it holding gigabytes (torch's and glibc's heaps keep
what the run freed: the app's server sat at ~4 GB RssAnon after the demo kit, 276 MB before), and only
a process that exits gives all of it back. So the demo build trains each model in a child.

How: `python -m core.demo.child` reads (function, args) pickled on its stdin (the function travels as
its module and name: a module-level function) and writes ("yield", item)…, then ("return", value),
("raise", error) or ("crash", traceback) as multiprocessing.connection messages on its original stdout;
its fd 1 then points at stderr, so nothing a library prints can garble the stream. A MergeDeskError
pickles as its class and one-line message, so it arrives as the same error; anything else is a bug and
arrives as ChildProcessError with the child's traceback. The child runs in its own session: Ctrl-C
reaches the parent only, which ends the child. cancel set, the generator closed or any error here: the
child is terminated at once (SIGTERM, SIGKILL after GRACE seconds) and reaped before in_child returns,
so what it was writing is the caller's to clean up (core.io.staging.recover). Not multiprocessing's
"spawn": that re-imports the parent's __main__ (app.py, with gradio) in every child.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Generator

from core.errors import MergeCancelled, MergeDeskError

ROOT = Path(__file__).resolve().parents[2]  # the folder that holds core/: on the child's import path
POLL = 0.1  # seconds between two looks at the cancel flag while the child is quiet
GRACE = 5.0  # seconds a child gets to exit after its last message, or after SIGTERM


def in_child(function: Callable[..., Generator], *args, cancel: threading.Event | None = None,
             stopped: str = "stopped", label: str = "the child process") -> Generator:
    """`function(*args)` run in a new Python process: what it yields, returns and raises, here.

    cancel set: the child is killed and MergeCancelled(stopped) raised. label names the job in the
    error of a child that died without a word (killed by a signal, out of memory).
    """
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    process = subprocess.Popen([sys.executable, "-m", "core.demo.child"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
                               start_new_session=True)
    messages = Connection(os.dup(process.stdout.fileno()), writable=False)
    process.stdout.close()
    finished = False
    try:
        try:
            process.stdin.write(pickle.dumps((function, args)))
            process.stdin.close()
        except BrokenPipeError:  # it died before reading: the end of its stream below says how
            pass
        while True:
            MergeCancelled.check(cancel, stopped)
            if not messages.poll(POLL):
                continue
            try:
                kind, value = messages.recv()
            except EOFError:
                raise _died(process, label) from None
            if kind == "yield":
                yield value
                continue
            finished = True
            if kind == "return":
                return value
            if kind == "raise":
                raise value from None
            raise ChildProcessError(f"{label} failed in its child process:\n{value}")
    finally:
        messages.close()
        _end(process, patient=finished)


def _died(process: subprocess.Popen, label: str) -> MergeDeskError:
    code = process.wait()
    why = f"was killed by signal {-code}" if code < 0 else f"ended with exit code {code}"
    hint = " (out of memory?)" if code == -9 else ""
    return MergeDeskError(f"{label} {why}{hint} before it finished: nothing of it was saved")


def _end(process: subprocess.Popen, *, patient: bool) -> None:
    """Reap the child: after its last message it may take GRACE seconds to exit; else it is ended now."""
    if patient:
        try:
            process.wait(GRACE)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve() -> int:
    """The child's side: run the pickled call from stdin, send each of its events on the original stdout."""
    out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # from here on, prints (ours and any library's) go to stderr
    try:
        function, args = pickle.load(sys.stdin.buffer)
        run = function(*args)
        while True:
            try:
                item = next(run)
            except StopIteration as done:
                out.send(("return", done.value))
                return 0
            out.send(("yield", item))
    except MergeDeskError as error:
        out.send(("raise", error))
        return 0
    except Exception:
        out.send(("crash", traceback.format_exc()))
        return 1


if __name__ == "__main__":
    sys.exit(serve())
