"""The Playground's passages box: its limits, its live count, and how its lines become one labelled query.

    parse_passages(query, text, limit=pasted_limit(ws))  # → [QueryItem], or a one-line RerankError

One passage per line. "+ passage" marks a relevant one (grade 1), "+2 passage" a grade 0–3 (nDCG's
gain); a relevant passage whose text itself starts with a digit 0–3 and a space is written with its
grade first ("+1 3 eggs, beaten"). A line that is only a mark ("+", "+3") is refused rather than
guessed at: it is either a passage whose text was lost or a grade with nothing to grade. The limits
are visible in the page and checked before scoring, so a huge paste gets one line instead of a
frozen tab. This file only parses text: scoring lives in core.rerank.
"""
from __future__ import annotations

import re

from core.app.workspace import Workspace
from core.errors import RerankError
from core.rerank.compare import QueryItem

MAX_PASTED = 5_000  # passages the text box takes (more: a JSONL file); hosted, also the pairs cap allows
MAX_PASTED_CHARS = 1_000_000  # characters the text box takes
# Counted in the browser as the text changes: no server round trip per keystroke.
COUNT_JS = ("(text) => { const n = (text || '').split(/\\r?\\n/).filter(l => l.trim()).length;"
            " return `${n.toLocaleString('en')} passages · ${(text || '').length.toLocaleString('en')} characters"
            " (at most LIMIT passages and CHARS characters; more: upload a JSONL file)`; }")
GRADE_RULE = re.compile(r"^\+([0-3])\s+(.*)$")
ONLY_A_MARK = re.compile(r"^\+[0-3]?$")  # "+" or "+3" and nothing after it


def pasted_limit(ws: Workspace) -> int:
    """Passages the text box takes: MAX_PASTED, and hosted no more than the pairs cap allows for two models."""
    return MAX_PASTED if ws.max_pairs is None else min(MAX_PASTED, ws.max_pairs // 2)


def count_line(ws: Workspace) -> str:
    return (f"0 passages · 0 characters (at most {pasted_limit(ws):,} passages and {MAX_PASTED_CHARS:,} characters; "
            "more: upload a JSONL file)")


def parse_passages(query: str, passages: str, *, limit: int = MAX_PASTED) -> list[QueryItem]:
    """One query from the text boxes; lines starting with '+' are relevant (label 1), '+N ' with N in 0–3
    gives the grade N (GRADE_RULE).

    Refuses more than `limit` passages or MAX_PASTED_CHARS characters, and a line that is only a mark.
    """
    text = passages or ""
    if len(text) > MAX_PASTED_CHARS:
        raise RerankError(f"the passages box holds {len(text):,} characters; it takes at most {MAX_PASTED_CHARS:,}: "
                          "upload the passages as a JSONL file instead")
    numbered = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(numbered) > limit:
        raise RerankError(f"{len(numbered):,} passages pasted; the box takes at most {limit:,}: "
                          "upload them as a JSONL file instead")
    for n, line in numbered:
        if ONLY_A_MARK.match(line):
            raise RerankError(f"passage line {n} is only '{line}': write the passage after it "
                              f"('{line} the passage'; a relevant passage whose text is a digit: '+1 3'), "
                              "or remove the line")
    labelled = [passage_label(line) for _, line in numbered]
    labels = [label for _, label in labelled]
    return [QueryItem(query or "", [doc for doc, _ in labelled], labels if any(labels) else None)]


def passage_label(line: str) -> tuple[str, int]:
    """'+2 text' → ('text', 2); '+ text' or '+text' → ('text', 1); 'text' → ('text', 0)."""
    graded = GRADE_RULE.match(line)
    if graded:
        return graded.group(2).strip(), int(graded.group(1))
    return (line[1:].strip(), 1) if line.startswith("+") else (line, 0)
