"""The Merge tab's multi-stage recipes (core.merge.stages): read them from the YAML box, label their progress.

    stages = page_stages(recipe_yaml, output_name, ws)     # None for a plain recipe
    label, event = unwrap(event)                           # "stage 2/3 second · " and its Progress

The final stage is written to the output name; named stages beside it in NAME-stages/ (kept, and
reused when they exist, as mergekit-multi does). Every model reference passes the workspace's path
policy (core.app.paths), the adapter of a `model+lora` too. No tensor math here.
"""
from __future__ import annotations

from functools import partial

from core.app.paths import check_model_ref
from core.app.workspace import Workspace, output_folder
from core.merge.engine import Progress
from core.merge.stages import Stage, StageProgress, is_multi_stage, parse_stages


def page_stages(recipe_yaml: str, output_name: str, ws: Workspace) -> list[Stage] | None:
    """A multi-stage recipe's stages from the YAML box, refs checked as the page checks them; None for a plain one."""
    text = recipe_yaml or ""
    if not is_multi_stage(text):
        return None
    return parse_stages(text, output_folder(output_name, ws), check_ref=partial(check_model_ref, ws=ws))


def unwrap(event: Progress | StageProgress) -> tuple[str, Progress | None]:
    """A label for the log and the status ("" for a plain merge) and the tensor's Progress (None: stage kept)."""
    if not isinstance(event, StageProgress):
        return "", event
    return f"stage {event.index}/{event.count} {event.stage.label} · ", event.progress


def kept_line(event: StageProgress) -> str:
    """The log's line for a stage whose folder exists (reused, not merged again)."""
    return f"{unwrap(event)[0]}{event.stage.out.name} exists: kept as it is (tick Replace to merge it again)"
