"""Promise 2 (continued): a merge deletes, renames or fills only folders it made itself.

Each test performs an attack from issue 16 on a real merge: the output is the recipe's
tokenizer_source (or holds it); folders that merely look like MergeDesk's leftovers
(OUT.old-7, OUT.partial without a marker, a forged or foreign marker) sit beside the output;
two threads of one process merge into the same output; an input carries onnx/,
checkpoint-500/ and a weight file inside a module folder; and the CLI is SIGKILLed before every
file-system step of a merge, replacing and not. Afterwards every folder the tool did not make
is byte-identical, and the output is the old model or the complete new one.
"""
import json
import os
import shutil
import subprocess
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

import pytest

from core.__main__ import main
from core.errors import OutputError
from core.io import staging
from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict
from tests.reliability.merge_helpers import (build_models, expected_linear, figures, folder_digest, linear_recipe,
                                             matches, one_line, write_recipe)

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = [0.6, 0.4]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("foreign"), count=2)


def _user_folder(path: Path, model: Path) -> Path:
    """A folder someone cares about: a model copy and a note."""
    shutil.copytree(model, path)
    (path / "NOTES.txt").write_text("my notes, in no other copy")
    return path


def test_the_tokenizer_source_is_an_input_the_output_may_not_overlap(models, tmp_path, capsys):
    tokenizer = _user_folder(tmp_path / "tok", models[1])
    data = {**linear_recipe(models, WEIGHTS), "tokenizer_source": str(tokenizer)}
    recipe, recipe_file = recipe_from_dict(data), write_recipe(tmp_path / "recipe.yml", data)
    digest, attempts = folder_digest(tokenizer), 0
    for target in (tokenizer, tokenizer / "merged", tmp_path):
        for overwrite in (True, False):
            with pytest.raises(OutputError, match=f"overlaps input model folder {tokenizer}"):
                merge(recipe, target, overwrite=overwrite)
            code = main(["merge", str(recipe_file), str(target), "--quiet", *(["--overwrite"] * overwrite)])
            error = capsys.readouterr().err
            assert code == 1 and one_line(error) and "overlaps input model folder" in error
            attempts += 2
    assert folder_digest(tokenizer) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml", "tok"]
    figures("2 output = tokenizer_source", attempts=attempts, refused=attempts, bytes_changed_in_it=0)


def test_folders_named_like_old_outputs_are_left_alone(models, tmp_path):
    recipe = recipe_from_dict(linear_recipe(models, WEIGHTS))
    out = tmp_path / "res"
    lookalikes = [_user_folder(tmp_path / "res.old-7", models[0]),
                  _user_folder(tmp_path / f"res.old-{'7' * 16}", models[0])]  # even in MergeDesk's own name format
    digests = [folder_digest(folder) for folder in lookalikes]
    _user_folder(out, models[1])
    with pytest.raises(OutputError, match="already exists"):  # refused: and nothing beside it touched
        merge(recipe, out)
    assert [folder_digest(folder) for folder in lookalikes] == digests
    merge(recipe, out, overwrite=True)
    assert matches(out, expected_linear(models, WEIGHTS)) and not (out / "NOTES.txt").exists()
    shutil.rmtree(out)  # only the look-alikes are left: neither is taken for a set-aside OUT and renamed
    merge(recipe, out)
    assert matches(out, expected_linear(models, WEIGHTS))
    assert [folder_digest(folder) for folder in lookalikes] == digests
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["res", *(f.name for f in lookalikes)])
    figures("2 folders named OUT.old-N", merges_beside_them=3, deleted=0, renamed=0)


def test_a_partial_folder_mergedesk_did_not_write_is_refused_and_kept(models, tmp_path, capsys):
    recipe_data = linear_recipe(models, WEIGHTS)
    recipe, recipe_file = recipe_from_dict(recipe_data), write_recipe(tmp_path / "recipe.yml", recipe_data)
    out, partial = tmp_path / "res", tmp_path / "res.partial"
    real = {"tool": "MergeDesk", "out": "res", "pid": 1, "token": "1" * 16}  # pid 1 never writes merges
    markers = {"no marker": None, "garbled marker": "{not json", "another tool": {**real, "tool": "OtherTool"},
               "another output": {**real, "out": "other"}, "malformed token": {**real, "token": "../x"},
               "empty folder": "EMPTY"}
    refused = 0
    for case, marker in markers.items():
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        if marker != "EMPTY":
            (partial / "weights.safetensors").write_bytes(os.urandom(4096))  # someone's work, named by chance
        if marker not in (None, "EMPTY"):
            (partial / staging.MARKER).write_text(marker if isinstance(marker, str) else json.dumps(marker))
        digest = folder_digest(partial)
        for overwrite in (False, True):
            with pytest.raises(OutputError, match=f"{partial} exists and was not written by MergeDesk: move it away"):
                merge(recipe, out, overwrite=overwrite)
            code = main(["merge", str(recipe_file), str(out), "--quiet", *(["--overwrite"] * overwrite)])
            error = capsys.readouterr().err
            assert code == 1 and one_line(error) and "was not written by MergeDesk" in error, case
            assert partial.is_dir() and folder_digest(partial) == digest and not out.exists(), case
            refused += 2
    figures("2 foreign OUT.partial", kinds=len(markers), merges_tried=refused, refused=refused, deleted=0)


def test_a_second_merge_into_the_same_output_from_another_thread_is_refused(models, tmp_path, capsys):
    recipe_data = linear_recipe(models, WEIGHTS)
    recipe, recipe_file = recipe_from_dict(recipe_data), write_recipe(tmp_path / "recipe.yml", recipe_data)
    out = tmp_path / "merged"
    holding, release, first = threading.Event(), threading.Event(), {}

    def hold_at_tensor_3(event):
        if event.step == 3:
            holding.set()
            release.wait(120)

    def first_merge():
        try:
            first["out"] = merge(recipe, out, on_progress=hold_at_tensor_3)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            first["error"] = error

    thread = threading.Thread(target=first_merge)
    thread.start()
    refusals = []
    try:
        assert holding.wait(120), "the first merge never reached tensor 3"
        for overwrite in (False, True):
            with pytest.raises(OutputError, match="is being written by another merge") as caught:
                merge(recipe, out, overwrite=overwrite)
            refusals.append(str(caught.value))
        assert main(["merge", str(recipe_file), str(out), "--quiet", "--overwrite"]) == 1
        refusals.append(capsys.readouterr().err)
        assert all(one_line(message) for message in refusals) and "being written by another merge" in refusals[-1]
        assert (tmp_path / "merged.partial").is_dir() and not out.exists()
    finally:
        release.set()
        thread.join(120)
    assert "error" not in first, first.get("error")
    assert matches(out, expected_linear(models, WEIGHTS))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "recipe.yml"]
    figures("2 two threads, one output", second_merges=len(refusals), refused=len(refusals), first_completed=1)


def test_threads_starting_together_never_break_each_other(models, tmp_path):
    recipe = recipe_from_dict(linear_recipe(models, WEIGHTS))
    refusals = ("is being written by another merge", "already exists")  # the second came during / after the first

    def race(out: Path, start: threading.Barrier, results: list[str]) -> None:
        start.wait(60)
        try:
            merge(recipe, out)
            results.append("merged")
        except OutputError as error:
            results.append(next((line for line in refusals if line in str(error)), str(error)))

    outcomes = []
    for round_ in range(8):
        out, start, results = tmp_path / f"r{round_}", threading.Barrier(2), []
        threads = [threading.Thread(target=race, args=(out, start, results)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert sorted(results) in (["already exists", "merged"], ["is being written by another merge", "merged"]), results
        assert matches(out, expected_linear(models, WEIGHTS)) and not (tmp_path / f"r{round_}.partial").exists()
        outcomes += results
    figures("2 two threads started together", rounds=8, one_output_each=8,
            second_refused_while_written=outcomes.count(refusals[0]), second_refused_after=outcomes.count(refusals[1]),
            raw_errors=0)


def test_only_module_folders_come_along_and_nothing_else_from_sub_folders(models, tmp_path):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
               {"idx": 3, "name": "3", "path": "../outside", "type": "sentence_transformers.models.Dense"}]
    inputs = []
    for index, model in enumerate(models):
        folder = tmp_path / f"st{index}"
        shutil.copytree(model, folder)
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
        (folder / "1_Pooling" / "extra.safetensors").write_bytes(b"module weights")  # a module's own, kept
        (folder / "2_Normalize").mkdir()
        (folder / "onnx").mkdir()
        (folder / "onnx" / "model.onnx").write_bytes(os.urandom(65536))  # the unmerged model, exported
        (folder / "onnx" / "config.json").write_text("{}")
        shutil.copytree(model, folder / "checkpoint-500")  # a training checkpoint of the unmerged model
        (folder / "checkpoint-500" / "trainer_state.json").write_text("{}")
        inputs.append(folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of any model")
    out = merge(recipe_from_dict(linear_recipe(inputs, WEIGHTS)), tmp_path / "merged")
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert found == ["1_Pooling", "1_Pooling/config.json", "1_Pooling/extra.safetensors", "2_Normalize", "README.md", "config.json",
                     "mergekit_config.yml", "model.safetensors", "modules.json"]
    assert matches(out, expected_linear(models, WEIGHTS))
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    figures("2 side folders of an input", sub_folders_offered=5, copied=2, files_copied_from_other_sub_folders=0)


# `python -m core merge …` that SIGKILLs itself just before its N-th file-system step once it
# has created OUT.partial: a mkdir, rename, unlink, rmdir (shutil.rmtree's too) or marker write.
DIES_BEFORE_STEP = """
import os, signal, sys
from core.io import staging
point, steps = int(sys.argv[1]), []
def counted(real, starts=False):
    def step(*args, **kwargs):
        if steps or (starts and str(args[0]).endswith(".partial")):
            steps.append(real)
            if len(steps) == point:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return step
for name in ("mkdir", "replace", "rename", "unlink", "rmdir"):
    setattr(os, name, counted(getattr(os, name), starts=name == "mkdir"))
staging._mark = counted(staging._mark)
from core.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigkill_before_every_step_keeps_the_old_output_and_every_foreign_folder(models, tmp_path):
    recipe_data = linear_recipe(models, WEIGHTS)
    recipe, recipe_file = recipe_from_dict(recipe_data), write_recipe(tmp_path / "recipe.yml", recipe_data)
    out, partial, expected = tmp_path / "merged", tmp_path / "merged.partial", expected_linear(models, WEIGHTS)
    foreign = _user_folder(tmp_path / "merged.old-7", models[0])
    foreign_digest, old_digest = folder_digest(foreign), folder_digest(models[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    seen = {"kills": 0, "old_lost": 0, "foreign_changed": 0, "empty_unmarked_partials_refused": 0}
    for replacing in (True, False):
        for point in range(1, 30):
            shutil.rmtree(out, ignore_errors=True)
            if replacing:
                shutil.copytree(models[1], out)
            command = [sys.executable, "-c", DIES_BEFORE_STEP, str(point), "merge", str(recipe_file), str(out),
                       "--quiet", *(["--overwrite"] * replacing)]
            code = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=120).returncode
            if code == 0:  # no step left to die before
                break
            assert code == -9
            seen["kills"] += 1
            try:  # the next merge repairs what the kill left, then refuses the existing OUT (or merges)
                merge(recipe, out)
            except OutputError as error:
                if "was not written by MergeDesk" in str(error):  # killed between mkdir and the marker
                    assert list(partial.iterdir()) == []
                    partial.rmdir()  # as the message asks
                    seen["empty_unmarked_partials_refused"] += 1
                    with pytest.raises(OutputError, match="already exists") if replacing else nullcontext():
                        merge(recipe, out)
                else:
                    assert "already exists" in str(error)
            new = matches(out, expected)
            seen["old_lost"] += replacing and not new and folder_digest(out) != old_digest
            assert new or (replacing and folder_digest(out) == old_digest), (replacing, point)
            seen["foreign_changed"] += folder_digest(foreign) != foreign_digest
            assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "merged.old-7", "recipe.yml"], point
            assert not (out / staging.MARKER).exists()
    assert seen["kills"] >= 10 and seen["old_lost"] == 0 and seen["foreign_changed"] == 0
    figures("2 SIGKILL before every step", **seen)
