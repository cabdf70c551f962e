"""The model card (README.md) written next to a merged model.

It carries Hugging Face front matter (base_model list, tags including `merge` and the method,
library) so the Hub links the merge to its parents, says in plain words how the model was
made, and embeds the exact recipe so anyone can reproduce it.
"""
from __future__ import annotations

import yaml

from core.merge.recipe import MergeRecipe, to_yaml


def model_card(recipe: MergeRecipe, *, name: str, sentence_transformers: bool) -> str:
    """README.md text for a model merged with `recipe` and saved as `name`."""
    method = recipe.method
    front = {
        "base_model": recipe.inputs(),
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
    lines += ["## Recipe", "", "This YAML (also saved as `mergekit_config.yml`) reproduces the merge with "
              "`python -m core merge mergekit_config.yml OUT`:", "", "```yaml", to_yaml(recipe).rstrip(), "```", ""]
    return "\n".join(lines)
