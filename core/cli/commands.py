"""The CLI's subcommands: each adds its parser and the function that runs it.

Kept apart from main.py (which only dispatches and turns errors into one line) so the
commands stay short and testable by calling `main([...])`.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

from core.devices import DEVICE_HELP
from core.errors import MergeCancelled
from core.merge.methods import METHODS
from core.units import human, parse_size

INTERMEDIATE_HELP = "multi-stage recipes: where named stages are written (default: OUT_DIR-stages beside OUT_DIR)"


def merge_command(sub, common) -> None:
    parser = sub.add_parser("merge", parents=[common], help="merge models as a recipe says",
                            description="Merge models into OUT_DIR as RECIPE (mergekit YAML) says.",
                            epilog=f"methods: {', '.join(METHODS)} (python -m core methods for their parameters)")
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("out_dir", help="model folder to create")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR if it exists (multi-stage: merge every stage again)")
    parser.add_argument("--intermediate-dir", help=INTERMEDIATE_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed for random methods (DARE, DELLA)")
    parser.add_argument("--shard-size", default="2GB", help="largest output file, e.g. 500MB, 2GB")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--refuse-nonfinite", action="store_true",
                        help="stop if an input or the merged output holds NaN or Inf (default: merge and warn on stderr)")
    parser.set_defaults(run=_merge)


def _merge(args) -> None:
    from core.merge.engine import merge_events
    from core.merge.recipe import load_recipe

    cancel = threading.Event()
    options = dict(device=args.device, overwrite=args.overwrite, seed=args.seed,
                   shard_bytes=parse_size(args.shard_size), refuse_nonfinite=args.refuse_nonfinite, cancel=cancel,
                   admit=lambda found: _warn_left_out(found.plan))
    stages = _stages(args, args.out_dir)
    if stages is not None:
        from core.merge.stages import merge_stages

        events = merge_stages(stages, **options)
    else:
        recipe = load_recipe(args.recipe)
        _warn(recipe)
        events = merge_events(recipe, args.out_dir, **options)
    try:
        _show(events, quiet=args.quiet)
    except KeyboardInterrupt:
        cancel.set()
        events.close()
        raise MergeCancelled("merge interrupted: no output was written") from None
    print(Path(args.out_dir).resolve())


def _show(events, *, quiet: bool) -> None:
    """A progress bar per merge (per stage of a multi-stage recipe) and NaN/Inf warnings, on stderr."""
    from tqdm import tqdm

    bar, desc = None, None
    try:
        for event in events:
            stage, event = (event, event.progress) if hasattr(event, "stage") else (None, event)
            where = f"stage {stage.index}/{stage.count} {stage.stage.label}" if stage else "merging"
            if event is None:
                print(f"{where}: kept {stage.stage.out} as it is (--overwrite merges it again)", file=sys.stderr)
                continue
            for finding in (*event.nonfinite, *event.notes):
                (bar.write if bar is not None else print)(f"warning: {finding}", file=sys.stderr)
            if where != desc and bar is not None:
                bar.close()
                bar = None
            if bar is None and not quiet:
                bar, desc = tqdm(total=event.bytes_total, unit="B", unit_scale=True, file=sys.stderr, desc=where), where
            if bar is not None:
                bar.update(event.bytes_done - bar.n)
                bar.set_postfix_str(f"{event.step}/{event.total} {event.device}", refresh=False)
    finally:
        if bar is not None:
            bar.close()


def _stages(args, out):
    """The stages of a multi-stage recipe (core.merge.stages), or None for a plain recipe."""
    from core.merge.stages import is_multi_stage, parse_stages

    try:
        text = Path(args.recipe).read_text(encoding="utf-8")
    except OSError:
        return None  # load_recipe says what is wrong with the file
    if not is_multi_stage(text, source=args.recipe):
        return None
    stages = parse_stages(text, out, intermediate_dir=args.intermediate_dir, source=args.recipe)
    for stage in stages:
        _warn(stage.recipe)
    return stages


def _warn(recipe) -> None:
    """What the recipe likely did not mean (core.merge.warnings), one `warning:` line each on stderr; it still runs."""
    from core.merge.warnings import recipe_warnings

    for line in recipe_warnings(recipe):
        print(f"warning: {line}", file=sys.stderr)


def _warn_left_out(plan) -> None:
    """The input tensors the merge leaves out (only some models have them), one `warning:` line each on stderr."""
    for line in plan.left_out:
        print(f"warning: {line}", file=sys.stderr)


def plan_command(sub, common) -> None:
    parser = sub.add_parser("plan", parents=[common], help="show what a merge will need, without running it")
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--out", default=".", help="where the output would go (for the free-disk check)")
    parser.add_argument("--intermediate-dir", help=INTERMEDIATE_HELP)
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--shard-size", default="2GB", help="largest output file")
    parser.set_defaults(run=_plan)


def _plan(args) -> None:
    from core.devices import devices_for
    from core.merge.preview import preview
    from core.merge.recipe import load_recipe

    devices = devices_for(args.device)
    stages = _stages(args, Path(args.out).resolve())
    if stages is None:
        recipe = load_recipe(args.recipe)
        _warn(recipe)
        found = preview(recipe, args.out, devices, shard_bytes=parse_size(args.shard_size))
        _print_plan(recipe, found, devices)
        found.check()  # the same verdict merge reaches: an error names what is short
        return
    from core.merge.stages import preview_stages

    previews = dict((s.out, f) for s, f in preview_stages(stages, devices, shard_bytes=parse_size(args.shard_size)))
    for index, stage in enumerate(stages, 1):
        print(f"stage {index}/{len(stages)} {stage.label} → {stage.out}")
        if stage.out not in previews:
            print("    exists: kept as it is (merge --overwrite merges it again)")
            continue
        _print_plan(stage.recipe, previews[stage.out], devices)
    for found in previews.values():
        found.check()


def _print_plan(recipe, found, devices) -> None:
    from core.merge.slices import output_layers, slice_lines

    plan, resources = found.plan, found.resources
    _warn_left_out(plan)
    print(f"method      {recipe.merge_method} ({recipe.method.label})")
    print(f"models      {len(recipe.inputs())}: " + ", ".join(recipe.inputs()))
    if recipe.slices:
        print(f"slices      {len(recipe.slices)}, {output_layers(recipe)} output layers")
        print("".join(f"              {line}\n" for line in slice_lines(recipe)), end="")
    if plan.vocabulary is not None:
        print(f"vocabulary  {plan.vocabulary.summary()} (embedding rows realigned)")
    print(f"tensors     {len(plan.jobs)} ({sum(j.merged for j in plan.jobs)} merged)")
    print(f"read        {human(plan.bytes_read)}")
    print(f"write       {human(plan.bytes_written)} in {len(plan.shards)} shard(s)")
    where = ", ".join(str(d) for d in devices)
    print(f"peak memory ≈ {human(plan.peak_bytes)} on {where} (largest tensor × inputs, float32)")
    print(f"memory      {human(resources.memory_free)} available ({resources.memory_of})")
    print(f"disk        {human(resources.disk_free)} free at {resources.disk_at}, "
          f"{human(resources.disk_needed)} needed")


def inspect_command(sub, common) -> None:
    parser = sub.add_parser("inspect", parents=[common], help="list a checkpoint's architecture, dtype and size")
    parser.add_argument("model", help="model folder or Hub id")
    parser.set_defaults(run=_inspect)


def _inspect(args) -> None:
    from core.merge.preview import open_checkpoint

    with open_checkpoint(args.model) as checkpoint:
        dtypes: dict[str, int] = {}
        for info in checkpoint.tensors.values():
            key = str(info.dtype).removeprefix("torch.")
            dtypes[key] = dtypes.get(key, 0) + info.nbytes
        config = checkpoint.config
        local = Path(checkpoint.ref).expanduser().resolve() == checkpoint.folder
        print(f"model         {checkpoint.folder if local else f'{checkpoint.ref} ({checkpoint.folder})'}")
        print(f"architecture  {', '.join(config.get('architectures') or ['unknown'])} "
              f"({config.get('model_type', 'no config.json')})")
        print(f"layers        {checkpoint.num_layers() or 'unknown'}")
        print(f"tensors       {len(checkpoint.tensors)}")
        print(f"parameters    {sum(i.numel for i in checkpoint.tensors.values()):,}")
        print(f"size          {human(checkpoint.total_bytes)}")
        print("dtypes        " + ", ".join(f"{k} {human(v)}" for k, v in sorted(dtypes.items())))
        kind = "sentence-transformers" if (checkpoint.folder / "modules.json").exists() else "transformers"
        print(f"format        {kind}")


def methods_command(sub, common) -> None:
    parser = sub.add_parser("methods", parents=[common], help="list merge methods and their parameters")
    parser.set_defaults(run=_methods)


def _methods(args) -> None:
    for method in METHODS.values():
        print(f"{method.name}: {method.label} — takes {method.needs()}")
        print(f"    {method.paper}")
        for param in method.params:
            scope = "per model" if param.per_model else "global"
            default = "required" if param.default is None else f"default {param.default}"
            valid = "" if param.kind is bool else f", range {param.range_text()}"
            print(f"    {param.name:<17} {param.kind.__name__}, {scope}, {default}{valid} — {param.help}")
