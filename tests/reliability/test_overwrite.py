"""Promise 2: nothing existing is lost.

An existing output folder is never touched without overwrite; with it, the old folder stays
whole until the new model is complete (checked at every step of the merge and after a failure
halfway); an output path equal to, inside, or holding an input model folder is refused before
anything is written, through the library and the CLI.
"""
import shutil

import pytest

from core.__main__ import main
from core.errors import MergeDeskError, OutputError
from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict
from tests.reliability.merge_helpers import (ByteBudget, build_models, expected_linear, figures, folder_digest,
                                             linear_recipe, matches, one_line, write_recipe)

WEIGHTS = [0.6, 0.4]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("overwrite"), count=2)


@pytest.fixture()
def existing(models, tmp_path):
    """An output folder that already holds a model (and a note) someone cares about."""
    out = tmp_path / "merged"
    shutil.copytree(models[1], out)
    (out / "notes.txt").write_text("keep me")
    return out


def test_an_existing_output_is_untouched_without_overwrite(models, existing, tmp_path, capsys):
    digest = folder_digest(existing)
    with pytest.raises(OutputError, match="already exists: choose another name or replace it"):
        merge(recipe_from_dict(linear_recipe(models, WEIGHTS)), existing)
    recipe_file = write_recipe(tmp_path / "recipe.yml", linear_recipe(models, WEIGHTS))
    assert main(["merge", str(recipe_file), str(existing), "--quiet"]) == 1
    assert one_line(capsys.readouterr().err)
    assert folder_digest(existing) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "recipe.yml"]


def test_overwrite_keeps_the_old_folder_whole_until_the_new_one_is_complete(models, existing, tmp_path):
    digest = folder_digest(existing)
    steps_seen_intact = []

    def old_still_there(event):
        steps_seen_intact.append(folder_digest(existing) == digest)

    merge(recipe_from_dict(linear_recipe(models, WEIGHTS)), existing, overwrite=True, on_progress=old_still_there)
    assert len(steps_seen_intact) == 24 and all(steps_seen_intact)
    assert matches(existing, expected_linear(models, WEIGHTS)) and not (existing / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no OUT.old-PID, no OUT.partial left
    figures("2 overwrite", merge_steps_checked=len(steps_seen_intact), old_folder_whole_at_each=sum(steps_seen_intact))


def test_a_replace_that_fails_halfway_keeps_the_old_folder(models, existing, tmp_path, monkeypatch):
    from core.io import writer

    digest = folder_digest(existing)
    monkeypatch.setattr(writer, "open", ByteBudget(2_000_000), raising=False)  # disk full at ~40 %
    with pytest.raises(OutputError, match="No space left on device"):
        merge(recipe_from_dict(linear_recipe(models, WEIGHTS)), existing, overwrite=True, shard_bytes=1_000_000)
    assert folder_digest(existing) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_an_output_overlapping_an_input_is_refused(models, tmp_path, capsys):
    """OUT equal to an input, inside one, or holding one: refused, even with overwrite."""
    holder = tmp_path / "holder"
    shutil.copytree(models[0], holder / "model")
    inputs = [holder / "model", models[1]]
    recipe = recipe_from_dict(linear_recipe(inputs, WEIGHTS))
    recipe_file = write_recipe(tmp_path / "recipe.yml", linear_recipe(inputs, WEIGHTS))
    digests = [folder_digest(holder), folder_digest(models[1])]
    targets = [holder / "model", holder / "model" / "merged", holder / "model" / "a" / "b", holder, models[1],
               holder / "model" / ".." / "model"]
    refused = 0
    for target in targets:
        for overwrite in (False, True):
            with pytest.raises(MergeDeskError, match="overlaps input model folder"):
                merge(recipe, target, overwrite=overwrite)
            code = main(["merge", str(recipe_file), str(target), "--quiet", *(["--overwrite"] * overwrite)])
            error = capsys.readouterr().err
            assert code == 1 and one_line(error) and "overlaps input model folder" in error
            refused += 1
    assert [folder_digest(holder), folder_digest(models[1])] == digests  # nothing created, nothing changed
    figures("2 output overlapping an input", attempts=2 * refused, refused=2 * refused, bytes_changed_in_inputs=0)
