"""Promise 8 (merge half): Stop during a merge ends it within one tensor and removes the partial output.

Stop is pressed at every tensor of a merge, in the middle of reading its inputs (as the UI's
Stop button does, from another thread, at any moment); at most the tensor being computed is
still written, then the merge raises MergeCancelled and neither OUT nor OUT.partial exists. A
Stop during a replace leaves the old folder whole; Ctrl-C on the CLI exits 130 the same way.
"""
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.errors import MergeCancelled
from core.io.checkpoint import Checkpoint
from core.io.writer import ShardWriter
from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict
from tests.reliability.merge_helpers import TENSORS, build_models, figures, folder_digest, linear_recipe, write_recipe

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = [0.5, 0.5]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("cancel"), count=2)


def stop_during_read(monkeypatch, read_number: int) -> tuple[threading.Event, list[str], list[str]]:
    """Set the cancel flag during the read_number-th input read.

    Returns the flag, the tensor being read when it was set, and the tensors written after it.
    """
    cancel, in_hand, written_after, reads = threading.Event(), [], [], [0]
    real_read, real_write = Checkpoint.read, ShardWriter.write

    def read(self, name, **kwargs):
        reads[0] += 1
        if reads[0] == read_number:
            cancel.set()
            in_hand.append(name)
        return real_read(self, name, **kwargs)

    def write(self, name, chunk):
        if cancel.is_set() and name not in written_after:
            written_after.append(name)
        return real_write(self, name, chunk)

    monkeypatch.setattr(Checkpoint, "read", read)
    monkeypatch.setattr(ShardWriter, "write", write)
    return cancel, in_hand, written_after


def test_stop_at_every_tensor_ends_within_one_tensor(models, tmp_path, monkeypatch):
    recipe = recipe_from_dict(linear_recipe(models, WEIGHTS))
    worst = 0
    for tensor in range(TENSORS):  # each tensor reads 2 inputs: stop during the first or the second
        read_number = 2 * tensor + 1 + tensor % 2
        with monkeypatch.context() as patch:
            cancel, in_hand, written_after = stop_during_read(patch, read_number)
            steps = []
            with pytest.raises(MergeCancelled, match="no output was written"):
                merge(recipe, tmp_path / "merged", cancel=cancel, on_progress=lambda event: steps.append(event.step))
        assert written_after in ([], in_hand)  # at most the tensor in hand when Stop came
        assert len(steps) <= (read_number + 1) // 2
        assert list(tmp_path.iterdir()) == []
        worst = max(worst, len(written_after))
    figures("8 Stop during a merge", stops_tried=TENSORS, ended_within_one_tensor=TENSORS,
            most_tensors_written_after_stop=worst, partial_outputs_left=0)


def test_stop_from_another_thread_like_the_stop_button(models, tmp_path):
    cancel, first_step, pressed, outcome = threading.Event(), threading.Event(), threading.Event(), {}
    steps = []

    def on_progress(event):
        steps.append(event.step)
        first_step.set()
        pressed.wait(60)  # the page shows step 1 while the person presses Stop

    def run():
        try:
            merge(recipe_from_dict(linear_recipe(models, WEIGHTS)), tmp_path / "merged", cancel=cancel,
                  on_progress=on_progress)
        except MergeCancelled as error:
            outcome["stopped"] = str(error)

    worker = threading.Thread(target=run)
    worker.start()
    first_step.wait(60)
    cancel.set()
    pressed.set()
    worker.join(60)
    assert outcome == {"stopped": "merge stopped: no output was written"}
    assert steps == [1] and list(tmp_path.iterdir()) == []


def test_stop_during_a_replace_keeps_the_old_model(models, tmp_path, monkeypatch):
    out = tmp_path / "merged"
    shutil.copytree(models[1], out)
    digest = folder_digest(out)
    cancel, _, _ = stop_during_read(monkeypatch, TENSORS)  # halfway
    with pytest.raises(MergeCancelled):
        merge(recipe_from_dict(linear_recipe(models, WEIGHTS)), out, overwrite=True, cancel=cancel)
    assert folder_digest(out) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


# Ctrl-C arrives while the CLI's merge has written argv[1] bytes of shards.
INTERRUPTED_AT = """
import os, signal, sys
from core.io import writer
from tests.reliability.merge_helpers import ByteBudget
writer.open = ByteBudget(int(sys.argv[1]), lambda path: os.kill(os.getpid(), signal.SIGINT))
from core.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_ctrl_c_on_the_cli_exits_130_and_leaves_nothing(models, tmp_path):
    recipe_file = write_recipe(tmp_path / "recipe.yml", linear_recipe(models, WEIGHTS))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_AT, "2000000", "merge", str(recipe_file),
                           str(tmp_path / "merged"), "--quiet"], cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert done.returncode == 130, done.stderr.decode()
    assert done.stderr.decode().strip() == "stopped: merge interrupted: no output was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml"]
