"""The command line: python -m core merge|plan|inspect|methods|rerank|evaluate|weights|sweep|demo."""
