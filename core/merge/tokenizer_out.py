"""The output model's tokenizer when the recipe realigns vocabularies or sets a chat template (mergekit 0.1.5's rules).

    write_tokenizer(staging, recipe, plan.vocabulary, inputs)   # after copy_side_files, before the folder appears

Without either, the tokenizer files are copied as they are (core.io.writer.copy_side_files). With a
vocabulary that was built (union, or tokens added by tokenizer.tokens) the tokenizer is saved with
transformers, as mergekit does; config.json's vocab_size becomes the output's row count. A chat_template
(auto: the inputs' most common one, in recipe order; or a Jinja string) is set on the tokenizer and saved.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from core.errors import CheckpointError
from core.io.checkpoint import Checkpoint
from core.io.writer import TOKENIZER_FILES
from core.merge.recipe import MergeRecipe
from core.merge.vocabulary import Vocabulary, load_tokenizer


def write_tokenizer(out: Path, recipe: MergeRecipe, vocabulary: Vocabulary | None,
                    inputs: dict[str, Checkpoint]) -> None:
    """Save the output tokenizer into `out` where it differs from the copied files, and set vocab_size."""
    template = chat_template_for(recipe, inputs)
    tokenizer = vocabulary.tokenizer if vocabulary is not None else None
    if tokenizer is not None or template is not None:
        if tokenizer is None:
            tokenizer = load_tokenizer(out, "the output (its copied tokenizer, for chat_template)", must=True)
        if template is not None:
            tokenizer.chat_template = template
        for name in TOKENIZER_FILES:
            (out / name).unlink(missing_ok=True)
        tokenizer.save_pretrained(str(out))
    config = out / "config.json"
    if vocabulary is not None and config.exists():
        data = json.loads(config.read_text(encoding="utf-8"))
        data["vocab_size"] = vocabulary.rows
        config.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def chat_template_for(recipe: MergeRecipe, inputs: dict[str, Checkpoint]) -> str | None:
    """The recipe's chat template: its Jinja text, or for auto the inputs' most common one (None: none has one)."""
    if recipe.chat_template != "auto":
        return recipe.chat_template
    found = []
    for ref in recipe.inputs():
        tokenizer = load_tokenizer(inputs[ref].folder, ref, must=False)
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default")
        if template:
            found.append(template.strip())
    return Counter(found).most_common(1)[0][0] if found else None


def check_chat_template_target(recipe: MergeRecipe, inputs: dict[str, Checkpoint]) -> None:
    """Refuse a chat_template where the output would have no tokenizer to hold it (before anything is written)."""
    first = inputs[recipe.inputs()[0]].folder
    if recipe.chat_template and recipe.vocabulary_source is None and load_tokenizer(first, "", must=False) is None:
        raise CheckpointError(f"chat_template is set but {recipe.inputs()[0]} has no tokenizer to write it into: "
                              "set tokenizer_source to a model that has one")
