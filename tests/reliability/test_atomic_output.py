"""Promise 1: nothing half-written is ever visible; a merge's output appears by one atomic rename.

Faults are injected where a real merge would meet them: the disk fills up in the middle of a
shard (the writer's file handle raises ENOSPC after a byte budget), and the merge process is
SIGKILLed at random points of its write phase, 20 times. Afterwards the output folder either
does not exist or is the complete, correct model; a leftover OUT.partial is cleaned by the next
run (or reported while its writer lives) and is never opened as a model.
"""
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.__main__ import main
from core.errors import CheckpointError, OutputError
from core.io import staging, writer
from core.io.checkpoint import Checkpoint
from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict
from tests.reliability.merge_helpers import (ByteBudget, build_models, expected_linear, figures, folder_digest,
                                             linear_recipe, matches, one_line, write_recipe)

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = [0.5, 0.3, 0.2]
SHARD_BYTES = 1_000_000  # 5 tensors of 192 KB per shard: 5 shards


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("atomic"))


def test_disk_full_mid_shard_leaves_no_output_and_a_rerun_succeeds(models, tmp_path, monkeypatch):
    recipe = recipe_from_dict(linear_recipe(models, WEIGHTS))
    out = tmp_path / "merged"
    total = sum(f.stat().st_size for f in models[0].glob("*.safetensors"))  # ≈ the bytes the merge writes
    budgets = [int(total * k / 10) + 1000 for k in range(10)]  # 10 points spread over all shards
    survived = 0
    for budget in budgets:
        monkeypatch.setattr(writer, "open", ByteBudget(budget), raising=False)
        with pytest.raises(OutputError) as caught:
            merge(recipe, out, shard_bytes=SHARD_BYTES)
        message = str(caught.value)
        assert "No space left on device" in message and one_line(message)
        assert list(tmp_path.iterdir()) == []  # no OUT, no OUT.partial
        survived += 1
    monkeypatch.undo()
    merge(recipe, out, shard_bytes=SHARD_BYTES)
    assert len(list(out.glob("*.safetensors"))) == 5
    assert matches(out, expected_linear(models, WEIGHTS))
    figures("1 disk full (ENOSPC) mid-shard", faults_injected=len(budgets), survived=survived,
            outputs_visible_after_a_fault=0, rerun_succeeded=1)


def test_disk_full_through_the_cli_is_one_line_and_exit_1(models, tmp_path, monkeypatch, capsys):
    recipe_file = write_recipe(tmp_path / "recipe.yml", linear_recipe(models, WEIGHTS))
    monkeypatch.setattr(writer, "open", ByteBudget(1_500_000), raising=False)
    code = main(["merge", str(recipe_file), str(tmp_path / "merged"), "--quiet", "--shard-size", "1MB"])
    error = capsys.readouterr().err
    assert code == 1 and one_line(error) and error.startswith("error: merge into") and "No space left" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml"]


# Runs `python -m core merge …` in a process that SIGKILLs itself at an exact point: once its
# shards hold N bytes ("bytes N"), or just before its N-th os.replace ("rename N"; in a replace,
# rename 2 is "partial → OUT", so dying there leaves OUT set aside as OUT.old-TOKEN and no OUT).
DIES_AT = """
import os, signal, sys
from core.io import staging, writer
from tests.reliability.merge_helpers import ByteBudget
kind, point = sys.argv[1], int(sys.argv[2])
die = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
if kind == "bytes":
    writer.open = ByteBudget(point, die)
else:
    real_replace, calls = os.replace, []
    def replace(*args):
        calls.append(args)
        if len(calls) == point:
            die()
        real_replace(*args)
    os.replace = replace
from core.__main__ import main
sys.exit(main(sys.argv[3:]))
"""


def _merge_process(recipe_file: Path, out: Path, *extra: str, dies_at: tuple[str, int] | None = None) -> int:
    """Run a CLI merge in its own process; return its exit status (-9: it was SIGKILLed)."""
    command = ["merge", str(recipe_file), str(out), "--quiet", "--shard-size", "1MB", *extra]
    prefix = ["-c", DIES_AT, dies_at[0], str(dies_at[1])] if dies_at else ["-m", "core"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *prefix, *command], cwd=ROOT, env=env, capture_output=True,
                          timeout=120).returncode


def _kill_lane(folder: Path, recipe_file: Path, old_model: Path, points: list[tuple[str, int]]) -> Counter:
    """Kill one merge per point into folder/merged (every other one replacing a copy of old_model); count outcomes."""
    out, partial, old_digest = folder / "merged", folder / "merged.partial", folder_digest(old_model)
    seen = Counter()
    for kill, point in enumerate(points):
        replacing = kill % 2 == 1 or point[0] == "rename"  # every other kill hits a replace (--overwrite)
        shutil.rmtree(out, ignore_errors=True)
        if replacing:
            shutil.copytree(old_model, out)
        assert _merge_process(recipe_file, out, *(["--overwrite"] if replacing else []), dies_at=point) == -9
        if partial.exists():  # a crash's leftovers are never taken for a model
            seen["stale_partials_cleaned"] += 1
            with pytest.raises(CheckpointError, match="unfinished or replaced merge output"):
                Checkpoint.open(str(partial))
        set_aside = list(folder.glob("merged.old-*"))
        survivor = out if out.exists() else (set_aside or [None])[0]  # the next run puts a set-aside OUT back
        if point[0] == "rename":
            seen["kills_between_the_renames_of_a_replace"] += 1
            seen["data_lost"] += survivor is None or folder_digest(survivor) != old_digest
            assert _merge_process(recipe_file, out) == 1  # no --overwrite: OUT is put back, then protected
            seen["data_lost"] += not out.exists() or folder_digest(out) != old_digest
        else:
            seen["kills_mid_shard"] += 1
            seen["data_lost"] += folder_digest(out) != old_digest if replacing else out.exists()
    assert _merge_process(recipe_file, out, "--overwrite") == 0  # the re-run cleans up and succeeds
    assert sorted(p.name for p in folder.iterdir()) == ["merged"]  # no partial, no .old-N
    return seen


@pytest.mark.slow
def test_sigkill_at_random_points_never_leaves_a_half_model(models, tmp_path):
    recipe_file = write_recipe(tmp_path / "recipe.yml", linear_recipe(models, WEIGHTS))
    total = sum(f.stat().st_size for f in models[0].glob("*.safetensors"))  # ≈ the bytes the merge writes
    chance = random.Random(20261123)
    lanes = []  # two lanes of 10 kills run side by side (one per core); each has one kill between renames
    for lane in range(2):
        points = [("bytes", chance.randrange(total)) for _ in range(9)] + [("rename", 2)]
        chance.shuffle(points)
        (tmp_path / f"lane{lane}").mkdir()
        lanes.append((tmp_path / f"lane{lane}", recipe_file, models[1], points))
    with ThreadPoolExecutor(2) as pool:
        seen = sum(pool.map(lambda lane: _kill_lane(*lane), lanes), Counter())
    expected = expected_linear(models, WEIGHTS)
    assert all(matches(folder / "merged", expected) for folder, *_ in lanes)
    assert seen["data_lost"] == 0
    kills = seen["kills_mid_shard"] + seen["kills_between_the_renames_of_a_replace"]
    assert kills == 20
    figures("1 SIGKILL at random points", faults_injected=kills, survived=kills, data_lost=seen["data_lost"],
            kills_mid_shard=seen["kills_mid_shard"],
            kills_between_the_renames_of_a_replace=seen["kills_between_the_renames_of_a_replace"],
            stale_partials_cleaned=seen["stale_partials_cleaned"], half_models_visible=0, reruns_succeeded=2)


@pytest.mark.slow
def test_a_stale_partial_is_cleaned_and_a_live_one_reported(models, tmp_path):
    recipe = recipe_from_dict(linear_recipe(models, WEIGHTS))
    recipe_file = write_recipe(tmp_path / "recipe.yml", linear_recipe(models, WEIGHTS))
    out, partial = tmp_path / "merged", tmp_path / "merged.partial"
    assert _merge_process(recipe_file, out, dies_at=("bytes", 2_000_000)) == -9  # a crash's marked leftovers
    with pytest.raises(CheckpointError, match="unfinished or replaced merge output, not a model"):
        Checkpoint.open(str(partial))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        marker = json.loads((partial / staging.MARKER).read_text())
        (partial / staging.MARKER).write_text(json.dumps({**marker, "pid": sleeper.pid}))  # a live process writes it
        with pytest.raises(OutputError, match=f"being written by another merge \\(process {sleeper.pid}\\)"):
            merge(recipe, out)
        assert partial.exists() and not out.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    merge(recipe, out)  # its writer is gone now: stale, cleaned
    assert not partial.exists() and matches(out, expected_linear(models, WEIGHTS))
    assert not (out / staging.MARKER).exists()
    figures("1 stale OUT.partial", stale_partials_cleaned=1, live_partials_reported=1, opened_as_a_model=0)


@pytest.mark.slow
def test_a_kill_between_the_two_renames_of_a_replace_loses_nothing(models, tmp_path):
    recipe_file = write_recipe(tmp_path / "recipe.yml", linear_recipe(models, WEIGHTS))
    out = tmp_path / "merged"
    shutil.copytree(models[1], out)
    digest = folder_digest(out)
    assert _merge_process(recipe_file, out, "--overwrite", dies_at=("rename", 2)) == -9  # OUT set aside, no new OUT
    set_aside = list(tmp_path.glob("merged.old-*"))
    assert not out.exists() and len(set_aside) == 1 and folder_digest(set_aside[0]) == digest
    with pytest.raises(OutputError, match="already exists"):  # put back first, then protected as usual
        merge(recipe_from_dict(linear_recipe(models, WEIGHTS)), out)
    assert folder_digest(out) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["merged", "recipe.yml"]
