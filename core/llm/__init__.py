"""Causal LMs (chat merges): safe loading (model), settings and bounds (settings), prompts and streamed
seeded generation (generate), per-text log-likelihood and perplexity (likelihood). Never imports gradio."""
