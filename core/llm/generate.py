"""Turn a prompt into the model's input, and generate from it token by token, streamed.

    prompt = build_prompt(lm.tokenizer, "Explain model merging.")  # the chat template when it has one
    prompt.how                                                      # "chat template" | "raw prompt (…)"
    for a, b in stream_pair([lm_a, lm_b], "Explain model merging.", settings):
        print(a, b)                                                 # each model's text so far
    generate(lm, "Explain model merging.", settings).token_ids      # the whole answer at once

The loop is written out (one forward pass per token with the KV cache) instead of calling
`model.generate`, for two reasons: each model draws from its own torch.Generator seeded with
settings.seed, so two models streamed side by side (or another job in the process) never share
or disturb a random stream; and only the settings given here apply, not whatever sampling
defaults a repo's generation_config.json carries. With the same settings, the tokens equal
`model.generate(do_sample=…, temperature=…, top_p=…, top_k=0)` after `torch.manual_seed(seed)`
on CPU (tests/test_llm_playground.py checks it): greedy is the argmax of the float32 logits;
sampling divides them by the temperature, keeps the nucleus (top_p) and draws with
torch.multinomial. Generation stops at an end-of-text token (which is kept in token_ids).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import zip_longest
from typing import Iterator

import torch

from core.errors import GenerationError
from core.llm.model import CausalLM
from core.llm.settings import LOCAL, GenerationSettings, Limits

NO_TEMPLATE = "raw prompt (the tokenizer has no chat template)"


@dataclass(frozen=True)
class Prompt:
    """What the model is given: the text after templating and its token ids."""

    text: str  # the prompt as the model sees it (with the chat template's markup when used)
    ids: list[int]
    how: str  # "chat template" or NO_TEMPLATE: which of the two was used


@dataclass(frozen=True)
class Generation:
    """One model's finished answer."""

    prompt: Prompt
    token_ids: list[int]  # the new tokens only, the end-of-text token included when it came
    text: str  # the new tokens decoded (special tokens left out)
    stopped: str  # "end of text" or "max_new_tokens"


def build_prompt(tokenizer, text: str, *, limits: Limits = LOCAL) -> Prompt:
    """The user's text as one user turn of the tokenizer's chat template (with the assistant's
    turn opened), or the raw text tokenized as it is when the tokenizer has no template."""
    if not isinstance(text, str) or not text.strip():
        raise GenerationError("the prompt is empty: type something for the models to continue or answer")
    if len(text) > limits.max_chars:
        raise GenerationError(f"the prompt has {len(text):,} characters; at most {limits.max_chars:,} here: shorten it")
    if getattr(tokenizer, "chat_template", None):
        templated = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)
        # The template writes the special tokens (BOS) itself: adding them again would double them.
        return Prompt(templated, tokenizer(templated, add_special_tokens=False)["input_ids"], "chat template")
    return Prompt(text, tokenizer(text)["input_ids"], NO_TEMPLATE)


class TokenStream:
    """Iterate to get the new text piece by piece (one piece per token, "" while a character is
    incomplete); afterwards token_ids, text and stopped hold the result."""

    def __init__(self, lm: CausalLM, prompt: Prompt, settings: GenerationSettings):
        if not prompt.ids:
            raise GenerationError("the prompt gave no tokens: type some words the tokenizer knows")
        if len(prompt.ids) + settings.max_new_tokens > lm.max_tokens:
            raise GenerationError(f"{lm.ref}: the prompt has {len(prompt.ids)} tokens and {settings.max_new_tokens} "
                                  f"new ones were asked for, more than its {lm.max_tokens} positions: "
                                  "shorten the prompt or ask for fewer new tokens")
        self.lm, self.prompt, self.settings = lm, prompt, settings
        self.token_ids: list[int] = []
        self.text = ""
        self.stopped = "max_new_tokens"

    def __iter__(self) -> Iterator[str]:
        lm, settings = self.lm, self.settings
        generator = torch.Generator(device=lm.device).manual_seed(settings.seed)
        stop = _end_ids(lm)
        inputs, past = torch.tensor([self.prompt.ids], device=lm.device), None
        for _ in range(settings.max_new_tokens):
            # Inference mode per step, never across the yield: grad mode is thread-local, and gradio
            # resumes a streaming handler on whichever worker thread is free, where a `with` opened
            # before the yield no longer holds (the next step then failed on the inference-mode cache).
            with torch.inference_mode():
                out = lm.model(input_ids=inputs, past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                token = _next_token(out.logits[:, -1, :].float(), settings, generator)  # (1,)
            self.token_ids.append(int(token))
            yield self._piece()
            if int(token) in stop:
                self.stopped = "end of text"
                break
            inputs = token.view(1, 1)

    def finish(self) -> Generation:
        """Run to the end (if not done yet) and return the result."""
        for _ in self:
            pass
        return self.result()

    def result(self) -> Generation:
        return Generation(self.prompt, list(self.token_ids), self.text, self.stopped)

    def _piece(self) -> str:
        """The text the newest token adds; held back while it ends in half a character (U+FFFD)."""
        full = self.lm.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if full.endswith("\ufffd") or not full.startswith(self.text):
            return ""
        piece, self.text = full[len(self.text):], full
        return piece


def generate(lm: CausalLM, text: str, settings: GenerationSettings, *, limits: Limits = LOCAL) -> Generation:
    """The whole answer of `lm` to `text` (settings checked against `limits`)."""
    return TokenStream(lm, build_prompt(lm.tokenizer, text, limits=limits), settings.checked(limits)).finish()


def stream_pair(lms: list[CausalLM], text: str, settings: GenerationSettings, *,
                limits: Limits = LOCAL) -> Iterator[tuple[Generation, ...]]:
    """Both models' answers so far, one token of each per step (each with its own prompt and seeded
    generator, so the interleaving changes nothing); the last item is the finished pair."""
    settings = settings.checked(limits)
    streams = [TokenStream(lm, build_prompt(lm.tokenizer, text, limits=limits), settings) for lm in lms]
    for _ in zip_longest(*streams):
        yield tuple(stream.result() for stream in streams)


def _next_token(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator) -> torch.Tensor:
    """The next token id, shape (1,), from the last position's float32 logits (1, vocab)."""
    if settings.greedy:
        return logits.argmax(dim=-1)
    scores = logits / settings.temperature
    if settings.top_p < 1:
        # Nucleus: drop the least likely tokens whose probabilities sum to at most 1 - top_p
        # (ascending order, so the most likely token always stays).
        ascending, order = torch.sort(scores, descending=False)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - settings.top_p
        drop[..., -1] = False
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), num_samples=1, generator=generator).view(1)


def _end_ids(lm: CausalLM) -> set[int]:
    """The end-of-text ids: the generation config's (an int or a list), else the tokenizer's."""
    ids = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = lm.tokenizer.eos_token_id
    return set() if ids is None else {int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])}
