"""The "Generate" tab: what a merged chat LLM writes and how likely it finds text, beside its base.

    build_generation(workspace)      # inside gr.Blocks; the layout puts it in its own tab

Model A defaults to the base of the latest merge when that merge is a causal LM (else the first
decoder found) and model B to that merge. One prompt goes to both, through each tokenizer's chat
template when it has one, with the same settings and seed; the answers stream side by side. The
"Likelihood" part scores pasted text or a JSONL set ({"text": …} lines) under both models. The
work happens in core.llm; this file turns its results into text and a table. Both jobs run in the
heavy lane (one at a time); their public API names are `generate_compare` and
`likelihood_compare`, every other event is private. Hosted, model references pass
check_model_ref, Hub ids are fetched with the visitor's own access (before the shared model cache,
core.model_cache, is looked at), the bounds are tighter (core.llm.settings.HOSTED), and Unload lets
go of the visitor's own models only.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from core.app.paths import check_model_ref
from core.app.workspace import Workspace
from core.errors import MergeDeskError
from core.llm.generate import Generation, stream_pair
from core.llm.likelihood import mean_score, read_texts, score_texts
from core.llm.model import CausalLM, find_decoders, is_causal_lm, load_causal_lm, unload_causal_lms
from core.llm.settings import HOSTED, LOCAL, GenerationSettings
from core.monitor import MONITOR
from ui.common import (PRIVATE, QUEUE, cache_owner, default_pair, device_choices, first_view, hub_token, job_label,
                       picker_updates, request_workspace)

DTYPES = ["auto", "float32", "bfloat16", "float16"]
LIKELIHOOD_COLUMNS = ["text", "tokens", "A log-likelihood", "A perplexity", "B log-likelihood", "B perplexity",
                      "Δ perplexity (B − A)"]
HELP = """Compare what two causal LMs write. **A** is the reference (by default the base of your latest merge),
**B** the model under test (by default that merge). Both get the same prompt (through the chat template when the
tokenizer has one), settings and seed. Temperature 0 is greedy decoding."""
LIKELIHOOD_HELP = """How likely each model finds some text (log-likelihood in nats, and perplexity: lower is
better). Paste text (a blank line between texts) or upload a JSONL file of `{"text": "…"}` lines."""


def build_generation(workspace: Workspace) -> tuple:
    """Add the tab's components and wiring to the current gr.Blocks context.
    Returns (handler, inputs, outputs) that re-fills the pickers (ui.common.follow_workspace)."""
    ws = gr.State(workspace)
    limits = HOSTED if workspace.hosted else LOCAL
    gr.Markdown(HELP)
    choices, first, second = first_view(workspace, decoder_choices, decoder_pair)
    with gr.Row():
        model_a = gr.Dropdown(choices, value=first, label="Model A (reference)", allow_custom_value=True, scale=3)
        model_b = gr.Dropdown(choices, value=second, label="Model B (under test)", allow_custom_value=True, scale=3)
        device = gr.Dropdown(device_choices(), value="cpu", label="Device", scale=1)
        dtype = gr.Dropdown(DTYPES, value="auto", label="dtype", info="auto: float32 on CPU, bf16 on GPU", scale=1)
    prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Explain model merging in two sentences.",
                        max_length=limits.max_chars)
    with gr.Row():
        max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=64, step=1, label="max new tokens")
        temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature", info="0 = greedy")
        top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
        seed = gr.Number(0, precision=0, label="seed", minimum=0)
    with gr.Row():
        run = gr.Button("Generate", variant="primary", scale=0)
        refresh = gr.Button("Refresh model lists", scale=0, min_width=260)
        # The two cached decoders are shared by every visitor, so hosted, nobody frees another's: no button.
        unload_button = gr.Button("Unload models", scale=0)
    status = gr.Markdown()
    with gr.Row():
        text_a = gr.Textbox(label="A writes", lines=12, interactive=False, buttons=["copy"])
        text_b = gr.Textbox(label="B writes", lines=12, interactive=False, buttons=["copy"])
    with gr.Accordion("Likelihood", open=False):
        gr.Markdown(LIKELIHOOD_HELP)
        with gr.Row():
            pasted = gr.Textbox(label="Texts (a blank line between texts)", lines=6, scale=3,
                                max_length=limits.max_chars)
            texts_file = gr.File(label="…or a JSONL file", file_types=[".jsonl", ".json"], scale=1)
        score = gr.Button("Score both models", variant="primary", size="sm")
        likelihood_status = gr.Markdown()
        table = gr.Dataframe(headers=LIKELIHOOD_COLUMNS, interactive=False, wrap=True,
                             label="Per text, and the mean over texts")

    run.click(generate_compare, [model_a, model_b, prompt, max_new_tokens, temperature, top_p, seed, device, dtype,
                                 ws], [status, text_a, text_b], api_name="generate_compare", concurrency_id=QUEUE,
              concurrency_limit=1, show_progress_on=status)
    score.click(likelihood_compare, [model_a, model_b, pasted, texts_file, device, dtype, ws],
                [likelihood_status, table], api_name="likelihood_compare", concurrency_id=QUEUE,
                concurrency_limit=1, show_progress_on=likelihood_status)
    refresh.click(refresh_decoders, ws, [model_a, model_b], **PRIVATE)
    unload_button.click(unload_all, ws, status, **PRIVATE)
    return refresh_decoders, ws, [model_a, model_b]


def generate_compare(model_a: str, model_b: str, prompt: str, max_new_tokens: float, temperature: float,
                     top_p: float, seed: float, device: str, dtype: str, workspace: Workspace,
                     request: gr.Request | None = None, oauth_token: gr.OAuthToken | None = None):
    """Stream (status, A's text, B's text) while both models answer `prompt`; the last yield is the
    finished pair. Any problem (not a causal LM, empty prompt, settings out of bounds) is one gr.Error line."""
    ws = request_workspace(workspace, request)
    limits = HOSTED if ws.hosted else LOCAL
    settings = GenerationSettings(max_new_tokens, temperature, top_p, seed)
    try:
        settings = settings.checked(limits)
        lms = _load_pair(model_a, model_b, device, dtype, ws, workspace, oauth_token, cache_owner(workspace, request))
        with MONITOR.job(job_label(ws, "generate", " / ".join(Path(lm.ref).name for lm in lms))):
            for pair in stream_pair(lms, prompt, settings, limits=limits):
                yield generation_status(lms, pair, settings, done=False), pair[0].text, pair[1].text
    except MergeDeskError as error:
        raise gr.Error(str(error), print_exception=False) from None
    yield generation_status(lms, pair, settings, done=True), pair[0].text, pair[1].text


def likelihood_compare(model_a: str, model_b: str, pasted: str, texts_file: str | None, device: str, dtype: str,
                       workspace: Workspace, request: gr.Request | None = None,
                       oauth_token: gr.OAuthToken | None = None):
    """(status, table): each text's log-likelihood and perplexity under A and B, the mean row first."""
    ws = request_workspace(workspace, request)
    try:
        texts = read_texts(pasted=pasted, path=texts_file, limits=HOSTED if ws.hosted else LOCAL)
        lms = _load_pair(model_a, model_b, device, dtype, ws, workspace, oauth_token, cache_owner(workspace, request))
        with MONITOR.job(job_label(ws, "likelihood", f"{len(texts)} texts")):
            scores = [score_texts(lm, texts) for lm in lms]
    except MergeDeskError as error:
        raise gr.Error(str(error), print_exception=False) from None
    return likelihood_status(lms, scores), likelihood_table(texts, scores)


def generation_status(lms: list[CausalLM], pair: tuple[Generation, ...], settings: GenerationSettings, *,
                      done: bool) -> str:
    how = (f"greedy, up to {settings.max_new_tokens} new tokens" if settings.greedy else
           f"sampled (temperature {settings.temperature:g}, top-p {settings.top_p:g}, seed {settings.seed}), "
           f"up to {settings.max_new_tokens} new tokens")
    lines = [f"{'✓ Done' if done else 'Generating…'} · {how}"]
    for name, lm, result in zip("AB", lms, pair):
        lines.append(f"**{name}**: {lm.describe()} · {result.prompt.how} · {len(result.token_ids)} tokens"
                     + (f", stopped at {result.stopped}" if done else ""))
    lines += _same_model_warning(lms)
    if done and not _same_model_warning(lms) and pair[0].token_ids == pair[1].token_ids:
        lines.append("A and B wrote the same tokens: try sampling, another seed or a longer answer.")
    return "\n\n".join(lines)


def likelihood_status(lms: list[CausalLM], scores: list[list]) -> str:
    (ll_a, ppl_a), (ll_b, ppl_b) = (mean_score(s) for s in scores)
    lines = [f"✓ {len(scores[0])} texts · mean perplexity A {ppl_a:.4g}, B {ppl_b:.4g} "
             f"(mean log-likelihood A {ll_a:.4f}, B {ll_b:.4f})",
             f"**A**: {lms[0].describe()} · **B**: {lms[1].describe()}"]
    return "\n\n".join(lines + _same_model_warning(lms))


def likelihood_table(texts: list[str], scores: list[list]) -> pd.DataFrame:
    """One row per text (tokens "a / b" when the tokenizers split it differently), the mean row first."""
    (ll_a, ppl_a), (ll_b, ppl_b) = (mean_score(s) for s in scores)
    rows = [{"text": "mean over texts", "tokens": "", "A log-likelihood": ll_a, "A perplexity": ppl_a,
             "B log-likelihood": ll_b, "B perplexity": ppl_b, "Δ perplexity (B − A)": ppl_b - ppl_a}]
    for text, a, b in zip(texts, *scores):
        rows.append({"text": text if len(text) <= 120 else text[:119] + "…",
                     "tokens": str(a.tokens) if a.tokens == b.tokens else f"{a.tokens} / {b.tokens}",
                     "A log-likelihood": a.log_likelihood, "A perplexity": a.perplexity,
                     "B log-likelihood": b.log_likelihood, "B perplexity": b.perplexity,
                     "Δ perplexity (B − A)": b.perplexity - a.perplexity})
    return pd.DataFrame(rows, columns=LIKELIHOOD_COLUMNS).round(4)


def decoder_choices(ws: Workspace) -> list[tuple[str, str]]:
    return [(choice.label, choice.ref) for choice in find_decoders(ws)]


def decoder_pair(ws: Workspace) -> tuple[str | None, str | None]:
    """(base, latest merge) when the latest merge is a causal LM; else the first two decoders found."""
    base, merge = default_pair(ws)
    if merge and is_causal_lm(ws.root / merge if ws.hosted else Path(merge)):
        return base, merge
    refs = [choice.ref for choice in find_decoders(ws)] or [None]
    return refs[0], refs[1] if len(refs) > 1 else refs[0]


def refresh_decoders(workspace: Workspace, request: gr.Request | None = None):
    ws = request_workspace(workspace, request)
    return picker_updates(decoder_choices(ws), decoder_pair(ws))


def unload_all(workspace: Workspace, request: gr.Request | None = None) -> str:
    """Let go of this session's decoders (hosted) or of all of them (local); one another session holds stays."""
    unload_causal_lms(owner=cache_owner(workspace, request))
    return "Models unloaded."


def _load_pair(model_a: str, model_b: str, device: str, dtype: str, ws: Workspace, workspace: Workspace,
               oauth_token: gr.OAuthToken | None, owner: str | None) -> list[CausalLM]:
    refs = [check_model_ref(ref, ws) for ref in (model_a, model_b)]
    token = hub_token(workspace, oauth_token)
    return [load_causal_lm(ref, device=device, dtype=None if dtype in (None, "auto") else dtype, token=token,
                           owner=owner) for ref in refs]


def _same_model_warning(lms: list[CausalLM]) -> list[str]:
    if lms[0].folder == lms[1].folder and lms[0].dtype == lms[1].dtype:
        return [f"⚠ A and B are the same model (`{Path(lms[0].ref).name}`): they give the same output by "
                "construction; pick another model for B."]
    return []
