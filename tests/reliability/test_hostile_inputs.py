"""Hostile inputs (issue 16, items 3 and 7): names that smuggle paths, YAML that explodes when printed.

Item 7: a ~330-byte "billion laughs" YAML document — nine lists of nine, each the next one's
nine aliases, 43 million values in all — put in a recipe's scalar field (merge_method,
base_model, dtype, tokenizer_source). yaml.safe_load builds it as shared lists in a blink; the
error message that quotes it with !r expanded it to a 254 MB line (more in the /plan Markdown
and the CLI). The attacks run in a child process with an address-space limit, so a regression
fails the test instead of taking the machine's memory; the child measures each call's Python
allocations (tracemalloc peak) and the reply it gives.

Item 3: an uploaded set file named `x=private.jsonl` made the Sweep tab read the server's own
`private.jsonl` (its "NAME=PATH" string was split again at the last '='), and the error told
whether that server file existed. Uploads and demo sets now travel as (name, path) pairs.
"""
from __future__ import annotations

import contextlib
import io
import json
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from core.errors import MAX_MESSAGE, RecipeError
from core.io.safe_yaml import MAX_VALUES, load_yaml
from core.merge.recipe import parse_recipe
from tests.reliability.merge_helpers import figures, one_line

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("merge_method", "base_model", "dtype", "tokenizer_source")
ENTRIES = ("parse_recipe", "/plan", "cli plan", "cli merge")
CHILD_MEMORY = 3 * 1024**3  # bytes of address space for the child: imports take ~1 GB, the old code wanted more
REFUSED = f"stands for more than {MAX_VALUES:,} values"


def alias_bomb(levels: int = 8, width: int = 9) -> str:
    """A flow list of `levels` anchored lists: the first holds `width` x's, each next one `width` aliases
    of the one before, so the last stands for width**levels values (9**8 = 43 million)."""
    names = "abcdefghijklmnopqrstuvwxyz"
    parts = [f"&a [{','.join(['x'] * width)}]"]
    parts += [f"&{names[i]} [{','.join([f'*{names[i - 1]}'] * width)}]" for i in range(1, levels)]
    return f"[{','.join(parts)}]"


def bomb_recipe(field: str) -> str:
    """A recipe, valid up to `field`, whose `field` holds the alias bomb (so the old code quoted it)."""
    models = "models: [{model: org/a, parameters: {weight: 1}}]"
    if field == "merge_method":
        return f"merge_method: {alias_bomb()}\n{models}\n"
    return f"merge_method: linear\n{models}\n{field}: {alias_bomb()}\n"


def run_bombs(folder: str) -> None:
    """The child's work: every entry point × field, a line of JSON each in folder/replies.jsonl."""
    from core.__main__ import main
    from core.app.workspace import Workspace
    from ui.merge.panel import plan

    root = Path(folder)
    ws = Workspace(root, root / "models", root / "outputs", hosted=True)  # the public Space's rules
    log = (root / "replies.jsonl").open("w", encoding="utf-8")
    for field in FIELDS:
        text = bomb_recipe(field)
        recipe_file = root / f"{field}.yml"
        recipe_file.write_text(text, encoding="utf-8")
        calls = {"parse_recipe": lambda: _error_text(parse_recipe, text),
                 "/plan": lambda: plan(text, "m", "cpu", ws),
                 "cli plan": lambda: _cli_stderr(main, ["plan", str(recipe_file)]),
                 "cli merge": lambda: _cli_stderr(main, ["merge", str(recipe_file), str(root / "out")])}
        for entry, call in calls.items():
            tracemalloc.start()
            try:
                reply = call()
            except MemoryError:
                reply = "MemoryError"
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(json.dumps({"entry": entry, "field": field, "input_bytes": len(text), "reply": reply[:2000],
                              "reply_chars": len(reply), "peak_bytes": peak,
                              "out_made": (root / "out").exists()}), file=log, flush=True)


def _error_text(function, text: str) -> str:
    try:
        function(text)
    except RecipeError as error:
        return str(error)
    return "no error"


def _cli_stderr(main, argv: list[str]) -> str:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return f"exit {code}: {stderr.getvalue()}"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


@pytest.fixture(scope="module")
def bomb_replies(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """(entry, field) → what the child saw; the child is memory-limited and given 5 minutes."""
    folder = tmp_path_factory.mktemp("bombs")
    code = "import sys; from tests.reliability.test_hostile_inputs import run_bombs; run_bombs(sys.argv[1])"
    try:
        done = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, preexec_fn=_limit_memory)
        err = done.stderr[-2000:]
    except subprocess.TimeoutExpired:
        err = "timed out after 300 s"
    log = folder / "replies.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    replies = {(found["entry"], found["field"]): found for found in map(json.loads, lines)}
    assert replies, f"the child reported nothing: {err}"
    return replies


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES)
def test_an_alias_bomb_in_a_scalar_field_gives_one_short_line_and_little_memory(bomb_replies, entry):
    for field in FIELDS:
        found = bomb_replies.get((entry, field))
        assert found is not None, f"{entry} with the bomb in {field} did not finish (killed, or over 5 minutes)"
        figures(f"7 alias bomb via {entry} in {field}", input_bytes=found["input_bytes"],
                reply_chars=found["reply_chars"], traced_peak_KB=found["peak_bytes"] // 1024)
        reply = found["reply"]
        assert found["reply_chars"] <= MAX_MESSAGE + 40 and one_line(reply), reply[:300]
        assert REFUSED in reply, reply[:300]
        assert found["peak_bytes"] < 2 * 1024**2  # the old code: hundreds of MB for the message alone
        assert not found["out_made"]
    if entry.startswith("cli"):
        assert bomb_replies[entry, "dtype"]["reply"].startswith("exit 1: error: ")


def test_an_alias_bomb_typed_into_a_setting_box_is_refused():
    from ui.merge.recipe_form import new_form, set_param

    with pytest.raises(RecipeError, match=REFUSED) as caught:
        set_param(new_form("slerp"), None, "t", alias_bomb())
    assert one_line(str(caught.value)) and len(str(caught.value)) <= MAX_MESSAGE


def test_aliases_within_the_bound_still_work_and_cycles_are_one_line():
    shared = parse_recipe("merge_method: linear\nmodels:\n  - {model: org/a, parameters: &p {weight: 0.5}}\n"
                          "  - {model: org/b, parameters: *p}\n")
    assert [e.parameters for e in shared.models] == [{"weight": 0.5}, {"weight": 0.5}]
    small = load_yaml(alias_bomb(levels=4), source="t")  # 9 + 81 + 729 + 6,561 values and their lists: allowed
    assert small[3][8][8][8] == ["x"] * 9
    with pytest.raises(RecipeError, match="alias inside the value it names"):
        load_yaml("merge_method: &a [*a]", source="the recipe")


def test_every_message_is_one_line_of_bounded_length():
    long = RecipeError("unknown merge_method '" + "x\r\nfake line\n" * 100_000 + "': choose one of linear, ties")
    text = str(long)
    assert len(text) == MAX_MESSAGE and "\n" not in text
    assert text.startswith("unknown merge_method") and text.endswith("choose one of linear, ties")


# ---- item 3: upload names are labels, never paths ------------------------------------------

QUERY = json.dumps({"query": "where is the secret", "pos": ["the secret is here"], "neg": ["nothing"]})


def sweep_error(uploads: list[str], ws, *, demo: tuple[str, ...] = ()) -> str:
    """The one-line error the Sweep tab shows before any model is loaded ("oops" is a bad α list)."""
    import gradio as gr

    from ui.sweep.panel import run_sweep

    with pytest.raises(gr.Error) as caught:
        next(run_sweep("org/a", "org/b", "linear", "cpu", list(demo), uploads, "oops", ws))
    return caught.value.message


def hosted(tmp_path):
    """A public Space's workspace: only uploads, demo sets and its own folders may be read."""
    from core.app.workspace import Workspace

    return Workspace(tmp_path / "app", tmp_path / "app" / "models", tmp_path / "app" / "outputs", hosted=True)


@pytest.mark.parametrize("public", [False, True], ids=["local", "hosted"])
def test_an_upload_named_name_equals_path_is_read_itself_not_the_server_file(tmp_path, monkeypatch, public):
    from core.app.workspace import Workspace
    from ui.sweep.panel import set_files

    uploads = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    upload = uploads / "3f2a" / "x=private.jsonl"  # the visitor's file name, kept by gradio
    upload.parent.mkdir(parents=True)
    upload.write_text("not json\n", encoding="utf-8")
    server = tmp_path / "server"  # the app's working folder, holding a file of its own
    server.mkdir()
    monkeypatch.chdir(server)
    ws = hosted(tmp_path) if public else Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs")
    (server / "private.jsonl").write_text(QUERY, encoding="utf-8")
    with_file = sweep_error([str(upload)], ws)
    (server / "private.jsonl").unlink()
    without_file = sweep_error([str(upload)], ws)
    figures("3 upload named x=private.jsonl", server_file_present=repr(with_file[-60:]),
            server_file_absent=repr(without_file[-60:]))
    assert f"{upload}:1" in with_file  # the upload's own bad first line, not the server's good file
    assert with_file == without_file  # no oracle: the server file's existence changes nothing
    assert set_files([], [str(upload)], ws) == [("x_private", str(upload))]  # the name is a label only


def test_a_hosted_sweep_opens_only_uploads_and_demo_sets(tmp_path, monkeypatch):
    import os

    from ui.sweep.panel import DEMO_SETS

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    server = tmp_path / "server"
    server.mkdir()
    ws = hosted(tmp_path)
    replies = {}
    for present in (True, False):
        for name in ("secret.jsonl", "eval.jsonl"):
            if present:
                (server / name).write_text(QUERY, encoding="utf-8")
            else:
                (server / name).unlink()
        replies["path", present] = sweep_error([str(server / "secret.jsonl")], ws)
        replies["demo", present] = sweep_error([], ws, demo=(os.path.relpath(server, DEMO_SETS),))
    figures("3 hosted sweep set outside the uploads", path=repr(replies["path", True][:80]),
            demo=repr(replies["demo", True][:80]))
    assert replies["path", True] == replies["path", False]
    assert "set file 'secret' is not an uploaded file" in replies["path", True]
    assert replies["demo", True] == replies["demo", False]
    assert replies["demo", True].startswith("unknown demo set '")


def test_cli_set_arguments_are_split_by_the_cli_and_passed_as_pairs(tmp_path):
    from core.cli.mix import set_arg

    odd = tmp_path / "a=1.jsonl"
    odd.write_text(QUERY, encoding="utf-8")
    assert set_arg("gen=assets/demo/general/eval.jsonl") == ("gen", "assets/demo/general/eval.jsonl")
    assert set_arg("assets/demo/general/eval.jsonl") == (None, "assets/demo/general/eval.jsonl")
    assert set_arg(str(odd)) == (None, str(odd))  # a file whose name holds '='
    assert set_arg(f"mine={odd}") == ("mine", str(odd))
