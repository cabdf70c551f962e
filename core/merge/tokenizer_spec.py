"""The recipe's vocabulary settings, as mergekit 0.1.5 reads them: `tokenizer_source`, the `tokenizer:` block, `chat_template`.

    tokenizer_source: union          # base | union | a model reference: realign embedding rows to that vocabulary
    tokenizer:                       # mergekit's newer form of the same (not together with tokenizer_source)
      source: union                  # default union
      tokens:                        # per token: where its row comes from where a model lacks it (or always: force)
        <|im_start|>: {source: ./chat-model}
        <|im_end|>: {source: {kind: model_token, model: ./chat-model, token: </s>}, force: true}
        <extra>: {source: {kind: zero}}
      pad_to_multiple_of: 64         # output rows padded up, the padding rows the mean of the others
    chat_template: auto              # auto (the inputs' most common) or a Jinja string

Parsing only: core.merge.vocabulary builds the vocabulary and core.merge.aligned reads rows through it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from core.errors import RecipeError

WORDS = ("base", "union")  # tokenizer sources that name no model
NAMED_TEMPLATES = ("alpaca", "chatml", "exaone", "llama3", "mistral")  # mergekit's packaged chat templates


@dataclass(frozen=True)
class TokenSource:
    """Where a token's row comes from: a model's row of the same token, a model's row of another token, or zeros."""

    kind: str  # "model" | "model_token" | "zero"
    model: str | None = None
    token: str | None = None  # model_token: the token whose row is taken (by name) ...
    token_id: int | None = None  # ... or by row index


@dataclass(frozen=True)
class TokenChoice:
    """One entry of tokenizer.tokens: its source, and whether it replaces the row even in models that have the token."""

    source: TokenSource | None = None
    force: bool = False


@dataclass(frozen=True)
class TokenizerSpec:
    """The `tokenizer:` block."""

    source: str = "union"  # base | union | a model reference
    tokens: tuple[tuple[str, TokenChoice], ...] = ()  # in the order given; tokens missing from the vocabulary are added
    pad_to_multiple_of: int | None = None


def parse_tokenizer(value: object) -> TokenizerSpec:
    """The `tokenizer:` block checked; one-line RecipeError naming the key otherwise."""
    if not isinstance(value, dict):
        raise RecipeError(f"'tokenizer' must be a mapping with source, tokens, pad_to_multiple_of; got {value!r}")
    unknown = set(value) - {"source", "tokens", "pad_to_multiple_of"}
    if unknown:
        raise RecipeError(f"unknown key(s) {sorted(unknown, key=str)} in tokenizer: valid are source, tokens, "
                          "pad_to_multiple_of")
    source = _reference(value.get("source", "union"), "tokenizer.source")
    pad = value.get("pad_to_multiple_of")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
        raise RecipeError(f"tokenizer.pad_to_multiple_of must be a whole number of at least 1, got {pad!r}")
    tokens = value.get("tokens") or {}
    if not isinstance(tokens, dict):
        raise RecipeError(f"tokenizer.tokens must map each token to {{source: ..., force: ...}}, got {tokens!r}")
    return TokenizerSpec(source, tuple((_token(tok), _choice(tok, choice)) for tok, choice in tokens.items()), pad)


def parse_chat_template(value: object) -> str | None:
    """chat_template: auto or a Jinja string; mergekit's named templates are refused by name (their files are mergekit's)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"'chat_template' must be auto or a Jinja template string, got {value!r}")
    if value in NAMED_TEMPLATES:
        raise RecipeError(f"chat_template: {value} names one of mergekit's packaged templates, which MergeDesk does "
                          "not ship yet: paste the Jinja text, or use auto")
    if value != "auto" and (len(value) < 20 or "{" not in value):
        raise RecipeError(f"chat_template {value!r} is neither auto nor a Jinja template (one with '{{' in it)")
    return value


def tokenizer_data(spec: TokenizerSpec) -> dict:
    """The block as recipe data again (parse_tokenizer(tokenizer_data(s)) == s)."""
    tokens = {tok: {**({"source": _source_data(c.source)} if c.source else {}), **({"force": True} if c.force else {})}
              for tok, c in spec.tokens}
    return {"source": spec.source, **({"tokens": tokens} if tokens else {}),
            **({"pad_to_multiple_of": spec.pad_to_multiple_of} if spec.pad_to_multiple_of else {})}


def check_vocabulary(tokenizer_source: str | None, spec: TokenizerSpec | None, inputs: list[str]) -> None:
    """tokenizer_source and tokenizer: not both (as mergekit); a token's rows come from a model the recipe reads."""
    if tokenizer_source and spec:
        raise RecipeError("give either tokenizer_source or a tokenizer: block (its source), not both")
    for _, choice in spec.tokens if spec else ():
        if choice.source and choice.source.model and choice.source.model not in inputs:
            raise RecipeError(f"tokenizer.tokens takes a row from {choice.source.model!r}, which the recipe does not "
                              "merge: name one of its models")


def renamed_spec(spec: TokenizerSpec | None, rename: Callable[[str], str]) -> TokenizerSpec | None:
    """The block with every model reference passed through `rename` (base and union kept)."""
    if spec is None:
        return None
    tokens = tuple((tok, replace(c, source=replace(c.source, model=rename(c.source.model)))
                    if c.source and c.source.model else c) for tok, c in spec.tokens)
    return replace(spec, source=spec.source if spec.source in WORDS else rename(spec.source), tokens=tokens)


def _source_data(source: TokenSource) -> object:
    if source.kind == "model":
        return source.model
    if source.kind == "zero":
        return {"kind": "zero"}
    which = {"token": source.token} if source.token is not None else {"token_id": source.token_id}
    return {"kind": "model_token", "model": source.model, **which}


def _token(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise RecipeError(f"tokenizer.tokens: each key must be a token (text), got {value!r}")
    return value


def _choice(token: str, value: object) -> TokenChoice:
    where = f"tokenizer.tokens[{token!r}]"
    if value is None:
        return TokenChoice()
    if not isinstance(value, dict) or set(value) - {"source", "force"}:
        raise RecipeError(f"{where} must be a mapping with source and/or force, got {value!r}")
    force = value.get("force", False)
    if not isinstance(force, bool):
        raise RecipeError(f"{where}.force must be true or false, got {force!r}")
    source = value.get("source")
    if source is None:
        return TokenChoice(None, force)
    if isinstance(source, str):
        return TokenChoice(TokenSource("model", _reference(source, f"{where}.source")), force)
    if isinstance(source, dict) and source.get("kind") == "zero" and set(source) == {"kind"}:
        return TokenChoice(TokenSource("zero"), force)
    if isinstance(source, dict) and source.get("kind") == "model_token" \
            and set(source) <= {"kind", "model", "token", "token_id"}:
        model = _reference(source.get("model"), f"{where}.source.model")
        token, token_id = source.get("token"), source.get("token_id")
        if (token is None) == (token_id is None):
            raise RecipeError(f"{where}.source: give either token or token_id (exactly one)")
        if token_id is not None and (not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0):
            raise RecipeError(f"{where}.source.token_id must be a row index (0 or more), got {token_id!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise RecipeError(f"{where}.source.token must be a token (text), got {token!r}")
        return TokenChoice(TokenSource("model_token", model, token, token_id), force)
    raise RecipeError(f"{where}.source must be a model reference, {{kind: zero}} or "
                      f"{{kind: model_token, model: ..., token: ... | token_id: ...}}, got {source!r}")


def _reference(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"'{key}' must be base, union or a model path or Hub id, got {value!r}")
    return value.strip()
