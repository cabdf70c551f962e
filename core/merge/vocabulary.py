"""The output vocabulary of a recipe that realigns embedding rows (tokenizer_source / tokenizer:), as mergekit 0.1.5 builds it.

    vocabulary = build_vocabulary(recipe, checkpoints)     # None unless the recipe asks for alignment
    vocabulary.rows                                       # rows of every token-indexed output tensor
    vocabulary.rules(("./base", "./chat"), "./base")       # per input: output row -> rows it is made of

mergekit's rules, which ported recipes rely on:
- the output vocabulary is the base's (`base`: base_model, else the first model), a model's, or
  `union`: the base's tokens, then every other token of any input (ordinary ones, then added ones);
  tokens named under tokenizer.tokens are appended when missing; pad_to_multiple_of pads the row count;
- an input's row for an output token is its own row of that token (ids past its config's vocab_size,
  an embedding's padding, count as absent); where it lacks the token (or the token is forced), the row
  comes from the token's entry under tokenizer.tokens, else from the one input that has it, else from
  the base when the base has it (zero delta for a base-relative method), else the mean of the inputs that
  have it; a token no input has is zeros;
- padding rows are each input's mean of its other rows.
The rules are data (Rule: which rows of which inputs, with what weights); core.merge.aligned reads them.
Tokenizers are loaded with transformers, from the local folders only, never with remote code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import CheckpointError, RecipeError
from core.io.checkpoint import Checkpoint
from core.io.lora import split_reference
from core.io.reference import resolve_reference
from core.merge.plan import TOKEN_INDEXED
from core.merge.recipe import MergeRecipe
from core.merge.tokenizer_spec import TokenChoice


@dataclass(frozen=True)
class Rule:
    """How one input's realigned tensor is made: row out_rows[k] += weights[k] * inputs[sources[k]][rows[k]]."""

    out_rows: torch.Tensor  # (terms,) long, sorted
    sources: torch.Tensor  # (terms,) long: index into the job's inputs
    rows: torch.Tensor  # (terms,) long: the row read there
    weights: torch.Tensor  # (terms,) float32


@dataclass
class Vocabulary:
    """The output vocabulary and, per input, where each of its tokens sits there (-1: absent)."""

    tokens: dict[str, int]  # output token -> output row
    rows: int  # output rows: len(tokens), padded up to pad_to_multiple_of
    positions: dict[str, torch.Tensor]  # reference -> (len(tokens),) long: the input's row of each token, or -1
    originals: dict[str, dict[str, int]]  # reference -> its own tokenizer's vocabulary (model_token by name)
    choices: dict[str, TokenChoice]  # tokenizer.tokens
    tokenizer: object | None  # the output tokenizer to save; None: the source's files are copied as they are
    copy_from: Path | None  # where those files come from (None: the first input, as without alignment)
    source: str = "base"  # base | union | the model reference it was built from
    _rules: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for `plan`, e.g. 'union: 110 tokens, padded to 128 rows'."""
        return f"{self.source}: {len(self.tokens)} tokens" + (
            f", padded to {self.rows} rows" if self.rows > len(self.tokens) else "")

    def rules(self, refs: tuple[str, ...], base: str | None) -> list[Rule]:
        """One Rule per input of a job reading `refs` (base: the recipe's base_model when among them)."""
        key = (refs, base)
        if key not in self._rules:
            self._rules[key] = _rules(self, refs, base if base in refs else None)
        return self._rules[key]


def is_token_indexed(name: str) -> bool:
    return name.endswith(TOKEN_INDEXED)


def build_vocabulary(recipe: MergeRecipe, checkpoints: dict[str, Checkpoint], *,
                     token: str | bool | None = None) -> Vocabulary | None:
    """The recipe's output vocabulary over opened inputs (base first), or None when the recipe realigns nothing."""
    source = recipe.vocabulary_source
    if source is None:
        return None
    refs = recipe.inputs()
    base = recipe.base_model or refs[0]
    if not (recipe.tokenizer or recipe.chat_template) and source != "union" and \
            not any(is_token_indexed(name) for ref in refs for name in checkpoints[ref].tensors):
        # no row is indexed by token (a bare stack of layers): nothing to realign, a source's files are copied
        folder = None if source == "base" else _source_folder(source, checkpoints, token)
        return Vocabulary({}, 0, {}, {}, {}, None, folder, source)
    loaded = {ref: load_tokenizer(checkpoints[ref].folder, ref, must=ref == base) for ref in refs}
    loaded = {ref: tok if tok is not None else loaded[base] for ref, tok in loaded.items()}  # mergekit: "same as base"
    limits = {ref: _vocab_limit(checkpoints[ref]) for ref in refs}
    beyond = [t for t, i in loaded[base].get_vocab().items() if i >= limits[base]]
    if beyond:
        raise CheckpointError(f"{base}: its tokenizer has {len(beyond)} token(s) past the embedding's {limits[base]} rows "
                              f"(such as {beyond[0]!r}): stripping them is not supported; give a model whose "
                              "tokenizer fits its embedding")
    copy_from, changed = None, False
    if source == "base":
        out = load_tokenizer(checkpoints[base].folder, base, must=True)
    elif source == "union":
        out, changed = _union(checkpoints[base].folder, base, loaded, limits), True
    else:
        folder = _source_folder(source, checkpoints, token)
        out, copy_from = load_tokenizer(folder, source, must=True), folder
    choices = dict(recipe.tokenizer.tokens) if recipe.tokenizer else {}
    missing = [tok for tok in choices if tok not in out.get_vocab()]
    if missing:
        out.add_tokens(missing)
        changed = True
    tokens = out.get_vocab()
    if sorted(tokens.values()) != list(range(len(tokens))):
        raise CheckpointError(f"tokenizer of {source}: its token ids are not 0..{len(tokens) - 1} without gaps")
    rows = len(tokens)
    pad = recipe.tokenizer.pad_to_multiple_of if recipe.tokenizer else None
    if pad and rows % pad:
        rows += pad - rows % pad
    order = sorted(tokens, key=tokens.get)
    positions = {}
    for ref in refs:
        own = loaded[ref].get_vocab()
        found = [own.get(tok, -1) for tok in order]
        positions[ref] = torch.tensor([i if i < limits[ref] else -1 for i in found], dtype=torch.long)
    return Vocabulary(tokens, rows, positions, {ref: tok.get_vocab() for ref, tok in loaded.items()}, choices,
                      out if changed or recipe.chat_template else None, copy_from, source)


def _source_folder(source: str, checkpoints: dict[str, Checkpoint], token: str | bool | None) -> Path:
    """The folder of a model named as the tokenizer source: an input's, else resolved (it need not be an input)."""
    if source in checkpoints:
        return checkpoints[source].folder
    return resolve_reference(split_reference(source)[0], token=token)


def load_tokenizer(folder: Path, ref: str, *, must: bool):
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True,
                                                          trust_remote_code=False)
    except Exception as error:  # noqa: BLE001 - any loader failure is one line for the person
        if not must:
            return None
        raise CheckpointError(f"{ref}: its tokenizer cannot be loaded ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); the vocabulary needs it") from None


def _vocab_limit(checkpoint: Checkpoint) -> int:
    """Rows an input's tokens may sit in: its config's vocab_size, within its token-indexed tensors' rows."""
    rows = [info.shape[0] for name, info in checkpoint.tensors.items() if is_token_indexed(name) and info.shape]
    size = checkpoint.config.get("vocab_size")
    limit = size if isinstance(size, int) and size > 0 else max(rows, default=0)
    return min([limit, *rows])


def _union(folder: Path, base: str, loaded: dict, limits: dict[str, int]):
    """The base's tokenizer (a fresh copy) with every other token of the inputs added: ordinary ones, then added ones."""
    ordinary: dict[str, None] = {}
    added: dict[str, object] = {}
    for ref, tok in loaded.items():
        specials = tok.added_tokens_decoder
        names = {info.content for info in specials.values()}
        for text, index in tok.get_vocab().items():
            if index < limits[ref] and text not in names:
                ordinary.setdefault(text)
        for index, info in specials.items():
            if index < limits[ref]:
                added.setdefault(info.content, info)
    out = load_tokenizer(folder, base, must=True)
    known = out.get_vocab()
    for text in ordinary:
        if text not in added and text not in known:
            out.add_tokens(text)
    for info in added.values():
        out.add_tokens(info)
    return out


def _rules(vocab: Vocabulary, refs: tuple[str, ...], base: str | None) -> list[Rule]:
    """mergekit's PermutedVocabulary over the job's inputs, as weighted row terms."""
    count = len(vocab.tokens)
    present_at = torch.stack([vocab.positions[ref] for ref in refs])  # (m, tokens)
    present = present_at >= 0
    chosen = torch.zeros(count, dtype=torch.bool)
    forced = torch.zeros(count, dtype=torch.bool)
    for text, choice in vocab.choices.items():
        chosen[vocab.tokens[text]] = True
        forced[vocab.tokens[text]] = choice.force
    # default rows of tokens without an entry: the base's where it has the token, else the mean of those that do
    have = present.sum(0)
    weight = present.float() / have.clamp(min=1)
    if base is not None:
        b = refs.index(base)
        weight = torch.where(present[b], torch.nn.functional.one_hot(torch.tensor(b), len(refs)).float()[:, None], weight)
    weight[:, chosen] = 0
    entries = _chosen_terms(vocab, refs, present_at, present, forced)
    all_rows = torch.arange(count)
    rules = []
    for i in range(len(refs)):
        own = present[i] & ~forced
        parts = [(all_rows[own], torch.full((int(own.sum()),), i), present_at[i][own], torch.ones(int(own.sum())))]
        lacking = ~own
        j, r = torch.nonzero((weight > 0) & lacking[None, :], as_tuple=True)
        parts.append((r, j, present_at[j, r], weight[j, r]))
        for row, terms in entries.items():
            if lacking[row]:
                if terms is None:
                    raise RecipeError(f"tokenizer.tokens[{_token_at(vocab, row)!r}] has no source, and {refs[i]} lacks "
                                      "that token (or it is forced): give it a source")
                parts.append(tuple(torch.tensor(x) for x in zip(*[(row, s, n, 1.0) for s, n in terms])) if terms
                             else (torch.empty(0, dtype=torch.long),) * 3 + (torch.empty(0),))
        out_rows, sources, rows, weights = (torch.cat([p[k].reshape(-1) for p in parts]) for k in range(4))
        order = torch.argsort(out_rows, stable=True)
        rules.append(Rule(out_rows[order].long(), sources[order].long(), rows[order].long(), weights[order].float()))
    return rules


def _chosen_terms(vocab: Vocabulary, refs: tuple[str, ...], present_at: torch.Tensor, present: torch.Tensor,
                  forced: torch.Tensor) -> dict[int, list[tuple[int, int]] | None]:
    """Output row -> [(input index, row)] for each token under tokenizer.tokens ([] zeros; None: no source given)."""
    terms: dict[int, list[tuple[int, int]] | None] = {}
    for text, choice in vocab.choices.items():
        row = vocab.tokens[text]
        if not forced[row] and bool(present[:, row].all()):
            continue  # every input has it: its own rows, the entry is never read
        source = choice.source
        if source is None or source.kind == "zero":
            terms[row] = None if source is None else []
            continue
        if source.model not in refs:
            raise RecipeError(f"tokenizer.tokens[{text!r}] takes its row from {source.model!r}, which this tensor "
                              "is not merged from")
        m = refs.index(source.model)
        if source.kind == "model":
            if not present[m, row]:
                raise RecipeError(f"tokenizer.tokens[{text!r}]: {source.model} has no token {text!r} to take the row of")
            terms[row] = [(m, int(present_at[m, row]))]
            continue
        index = source.token_id if source.token is None else vocab.originals[source.model].get(source.token)
        if index is None:
            raise RecipeError(f"tokenizer.tokens[{text!r}]: {source.model} has no token {source.token!r}")
        terms[row] = [(m, index)]
    return terms


def _token_at(vocab: Vocabulary, row: int) -> str:
    return next(tok for tok, i in vocab.tokens.items() if i == row)
