"""Promise 3: free disk and memory are checked before a merge starts, and by `plan`.

The machine's figures are replaced by smaller ones (disk_usage, virtual_memory) so the check
must refuse; the message must name what the merge needs and what there is, and nothing may be
created. The needed disk is computed here from the inputs' headers, not taken from the plan.
"""
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from core.__main__ import main
from core.errors import ResourceError
from core.io.checkpoint import Checkpoint
from core.merge import preflight
from core.merge.engine import merge, open_inputs, plan_for
from core.merge.recipe import recipe_from_dict
from core.units import human
from tests.reliability.merge_helpers import build_models, figures, linear_recipe, one_line, write_recipe

Usage = namedtuple("Usage", "total used free")
Memory = namedtuple("Memory", "total available")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("preflight"), count=2)


def output_bytes(model: Path) -> int:
    """What a linear merge of same-shaped float32 models writes: every tensor's bytes, + 16 MiB of side files."""
    tensors = Checkpoint.open(str(model)).tensors.values()
    return sum(info.numel * 4 for info in tensors) + 16 * 1024 * 1024


def peak_bytes(models) -> int:
    recipe = recipe_from_dict(linear_recipe(models, [1, 1]))
    checkpoints = open_inputs(recipe)
    return plan_for(recipe, checkpoints).peak_bytes


def test_too_little_disk_is_refused_naming_needed_and_free(models, tmp_path, monkeypatch):
    needed = output_bytes(models[0])
    free = needed // 3
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: Usage(10 * needed, 0, free))
    with pytest.raises(ResourceError) as caught:
        merge(recipe_from_dict(linear_recipe(models, [1, 1])), tmp_path / "merged")
    message = str(caught.value)
    assert one_line(message) and message.startswith(f"not enough disk space at {tmp_path}")
    assert f"writes {human(needed)}, {human(free)} free" in message
    assert list(tmp_path.iterdir()) == []


def test_too_little_memory_is_refused_naming_needed_and_available(models, tmp_path, monkeypatch):
    needed = peak_bytes(models)
    available = needed // 2
    monkeypatch.setattr(preflight.psutil, "virtual_memory", lambda: Memory(4 * needed, available))
    with pytest.raises(ResourceError) as caught:
        merge(recipe_from_dict(linear_recipe(models, [1, 1])), tmp_path / "merged")
    message = str(caught.value)
    assert one_line(message)
    assert f"needs ≈ {human(needed)} of working memory, RAM has {human(available)} available" in message
    assert list(tmp_path.iterdir()) == []


def test_plan_reports_the_figures_and_fails_the_same_way(models, tmp_path, monkeypatch, capsys):
    recipe_file = write_recipe(tmp_path / "recipe.yml", linear_recipe(models, [1, 1]))
    out = tmp_path / "new" / "merged"  # the nearest existing folder is measured
    assert main(["plan", str(recipe_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"free at {tmp_path}" in printed and "needed" in printed and "available (RAM)" in printed
    cases = {"disk": (lambda path: Usage(1, 1, 1000), None), "memory": (None, lambda: Memory(1, 1000))}
    for what, (disk, memory) in cases.items():
        with monkeypatch.context() as patch:
            if disk:
                patch.setattr(preflight.shutil, "disk_usage", disk)
            if memory:
                patch.setattr(preflight.psutil, "virtual_memory", memory)
            assert main(["plan", str(recipe_file), "--out", str(out)]) == 1
        error = capsys.readouterr().err
        assert one_line(error) and error.startswith(f"error: not enough {what}") and "1.00 KB" in error
    figures("3 preflight", short_of_disk_or_memory_tried=4, refused_before_writing=4,
            messages_naming_needed_and_available=4)


def test_enough_resources_pass_and_report_what_was_measured(models, tmp_path):
    recipe = recipe_from_dict(linear_recipe(models, [1, 1]))
    checkpoints = open_inputs(recipe)
    plan = plan_for(recipe, checkpoints)
    found = preflight.measure_resources(plan, tmp_path / "x" / "y", [torch.device("cpu")])
    assert preflight.shortage(found) is None
    assert found.disk_at == tmp_path and found.disk_needed == output_bytes(models[0])
    assert found.memory_needed == plan.peak_bytes and found.memory_of == "RAM" and found.memory_free > 0
