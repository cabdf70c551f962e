"""Read a tensor's row blocks from several checkpoints on a background thread, one block ahead of the merge.

    with RowBlocks([(base, "lm_head.weight"), (ft1, "lm_head.weight")], job.row_slices()) as blocks:
        for piece, stored in blocks:   # stored[i]: input i's rows `piece`, in its stored dtype, on the CPU
            ...                        # valid until the next block is asked for

Why: a block's preadv (a copy out of the page cache, or a wait for the disk) releases the GIL, so on a
second core it runs while the engine merges the block before it, instead of between two merges. The
thread fills one of two buffer sets (one buffer per input, allocated once and reused block after
block: a fresh megabyte block is a fresh mapping whose every page faults) while the caller uses the
other, so a block is never overwritten while it is in use.
With release=True (a single pass over inputs larger than RAM) each block's file pages are released
(Checkpoint.release) once the caller is done with it.
Leaving the `with` block (all blocks merged, a Stop, an error) stops the thread and waits for it to end;
an error raised while reading (a file cut short) is raised in the caller at the block it belongs to.
"""
from __future__ import annotations

import queue
import threading

import torch

from core.io.checkpoint import Checkpoint

BUFFER_SETS = 2  # one being merged, one being read


class RowBlocks:
    """Consecutive row blocks `pieces` of tensor `name` of each (checkpoint, name) in `reads`, read ahead."""

    def __init__(self, reads: list[tuple[Checkpoint, str]], pieces: list[slice], *, release: bool = False):
        self.reads, self.pieces, self.release = reads, pieces, release  # release: see Checkpoint.release
        self.free: queue.Queue = queue.Queue()  # buffer sets the thread may fill (None: stop)
        self.ready: queue.Queue = queue.Queue()  # (piece, blocks, buffer set) or the exception raised reading
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read_ahead, name="row-block reader", daemon=True)

    def __enter__(self) -> RowBlocks:
        for _ in range(BUFFER_SETS):
            self.free.put([])
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread after the block it is reading, and wait for it."""
        self.stopping.set()
        self.free.put(None)
        self.thread.join()

    def __iter__(self):
        for _ in self.pieces:
            item = self.ready.get()
            if isinstance(item, BaseException):
                raise item
            piece, blocks, buffers = item
            yield piece, blocks
            if self.release:  # the caller is done with this block: its pages may go
                for checkpoint, name in self.reads:
                    checkpoint.release(name, piece)
            self.free.put(buffers)

    def _read_ahead(self) -> None:
        try:
            for piece in self.pieces:
                buffers = self.free.get()
                if buffers is None or self.stopping.is_set():
                    return
                infos = [checkpoint.tensors[name] for checkpoint, name in self.reads]
                if not buffers:  # first use of this set: one buffer per input, a whole block long (the first is)
                    buffers += [torch.empty((piece.stop - piece.start, *info.shape[1:]), dtype=info.dtype)
                                for info in infos]
                start, stop, _ = piece.indices(infos[0].shape[0])  # the last block may be shorter
                blocks = [checkpoint.read(name, rows=piece, out=buffer[:stop - start])
                          for (checkpoint, name), buffer in zip(self.reads, buffers)]
                self.ready.put((piece, blocks, buffers))
        except BaseException as error:  # noqa: BLE001 - handed to the caller, who raises it
            self.ready.put(error)
