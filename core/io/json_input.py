"""Parse JSON a user handed us (config.json, query and example JSONL) so that every failure is one line.

    data = parse_json(text, where="models/a/config.json", error=CheckpointError)

`json.loads` fails in four ways that are not `JSONDecodeError`, and each would otherwise escape
as a crash: nesting deeper than Python's recursion limit (RecursionError), an integer of more
than 4300 digits (ValueError, Python's int/str conversion limit), and — accepted by json but
not text — a lone UTF-16 surrogate escape such as "\\ud800", which breaks the tokenizers and
every UTF-8 writer later on. Here all four become `error(f"{where}: …")` naming the problem
and what to do. This module reads nothing from disk itself.
"""
from __future__ import annotations

import json
import sys

from core.errors import MergeDeskError


def parse_json(text: str, *, where: str, error: type[MergeDeskError]) -> object:
    """The value of the JSON `text`, or `error` with a one-line reason that starts with `where`.

    Example:
        >>> parse_json('[' * 100_000, where="a.json", error=MergeDeskError)
        MergeDeskError: a.json: JSON nests too deeply (hundreds of levels) to be a real file: ...
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as problem:
        raise error(f"{where}: not valid JSON ({problem.msg} at line {problem.lineno} column {problem.colno})") from None
    except RecursionError:
        raise error(f"{where}: JSON nests too deeply (hundreds of levels) to be a real file: "
                    "check that it is the right file") from None
    except ValueError:  # int_max_str_digits: only an over-long integer literal gets here
        raise error(f"{where}: holds an integer of more than {sys.get_int_max_str_digits()} digits: write a smaller number") from None
    bad = _lone_surrogate(data)
    if bad is not None:
        raise error(f"{where}: holds a lone surrogate escape ({bad!r}) that is not text: "
                    "replace it with the character it stands for or remove it")
    return data


def _lone_surrogate(data: object) -> str | None:
    """The first lone surrogate in any string (keys included) of `data`, walked without recursion."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as problem:
                return item[problem.start]
    return None

