"""The model card (README.md) written next to a merged model.

It carries Hugging Face front matter (base_model list, tags including `merge` and the method,
library) so the Hub links the merge to its parents, says in plain words how the model was
made, and embeds the exact recipe so anyone can reproduce it, with MergeDesk or with mergekit.

`base_model` lists Hub ids only (the Hub rejects or mislinks local paths): an input given as a
Hub id, or a local folder that says which Hub model it is (its config.json `_name_or_path`, or
a Hugging Face cache folder `models--org--name`); an input known only by its path is left out.

After `python -m core evaluate` (or the app) compares the merge with its base, add_evaluation puts
that comparison table into the card as its "## Evaluation" section (replacing an earlier one).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from core.errors import RerankError
from core.io.checkpoint import Checkpoint
from core.io.reference import HUB_ID
from core.merge.recipe import MergeRecipe, to_yaml

# mergekit 0.1.5's merge_method names: a recipe with one of these runs under mergekit-yaml unchanged
MERGEKIT_METHODS = frozenset({"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
                              "breadcrumbs_ties", "della", "della_linear", "slerp", "nuslerp", "model_stock",
                              "multislerp", "karcher", "sce", "nearswap", "arcee_fusion", "passthrough"})
EVALUATION_HEADING = "## Evaluation"
CACHE_FOLDER = re.compile(r"^models--([A-Za-z0-9][\w.-]*)--([\w.-]+)$")  # huggingface_hub's cache layout


def model_card(recipe: MergeRecipe, *, name: str, sentence_transformers: bool,
               inputs: dict[str, Checkpoint] | None = None) -> str:
    """README.md text for a model merged with `recipe` and saved as `name`; `inputs` (ref → the opened
    checkpoint) tell local folders' Hub ids, see hub_ids."""
    method = recipe.method
    parents = hub_ids(recipe, inputs or {})
    front = {
        **({"base_model": parents} if parents else {}),
        "library_name": "sentence-transformers" if sentence_transformers else "transformers",
        "tags": ["merge", "mergedesk", recipe.merge_method],
    }
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
        f"# {name}", "",
        f"This model is a merge made with MergeDesk using the [{method.label}]({method.paper}) method.", "",
    ]
    if recipe.uses_base:
        lines += [f"Base model: `{recipe.base_model}`", ""]
    lines += ["Models merged:", ""] + [f"- `{entry.model}`" for entry in recipe.rows()] + [""]
    mergekit = (" or with [mergekit](https://github.com/arcee-ai/mergekit): "
                "`mergekit-yaml mergekit_config.yml OUT`" if recipe.merge_method in MERGEKIT_METHODS else "")
    lines += ["## Recipe", "", "This YAML (also saved as `mergekit_config.yml`) reproduces the merge with MergeDesk: "
              f"`python -m core merge mergekit_config.yml OUT`{mergekit}.", "",
              "```yaml", to_yaml(recipe).rstrip(), "```", ""]
    return "\n".join(lines)


def hub_ids(recipe: MergeRecipe, inputs: dict[str, Checkpoint]) -> list[str]:
    """The Hub ids of the recipe's inputs, base first, each once; inputs whose Hub id is unknown are left out."""
    found = [_hub_id(ref, inputs.get(ref)) for ref in recipe.inputs()]
    return list(dict.fromkeys(ref for ref in found if ref))


def _hub_id(ref: str, checkpoint: Checkpoint | None) -> str | None:
    if not Path(ref).expanduser().exists():  # not a folder here: resolve_reference took it as a Hub id
        return ref if HUB_ID.match(ref) else None
    if checkpoint is None:
        return None
    named = checkpoint.config.get("_name_or_path")
    if isinstance(named, str) and HUB_ID.match(named) and not Path(named).expanduser().exists():
        return named
    cached = next((CACHE_FOLDER.match(part) for part in checkpoint.folder.parts if CACHE_FOLDER.match(part)), None)
    return f"{cached[1]}/{cached[2]}" if cached else None


def add_evaluation(folder: str | Path, evaluation: dict) -> Path:
    """Write the comparison table of `evaluation` (Evaluation.to_dict(), or evaluate --json's output)
    into `folder`/README.md as its "## Evaluation" section, replacing an earlier one; returns the path.

    Example:
        >>> add_evaluation("out/merged", result.to_dict())   # then README.md ends with the table
    """
    from core.rerank.report import markdown_table

    card = Path(folder) / "README.md"
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RerankError(f"cannot add the evaluation to {card}: {error}") from None
    section = f"{EVALUATION_HEADING}\n\nCompared with MergeDesk (`python -m core evaluate`).\n\n{markdown_table(evaluation)}"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == EVALUATION_HEADING), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        stop = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + section + ("\n" + "".join(lines[stop:]) if stop < len(lines) else "")
    partial = card.with_name("README.md.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(card)
    return card
