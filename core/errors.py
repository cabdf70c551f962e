"""Errors a user can act on.

Every problem with the user's input (a recipe, a model path, a device, an output folder)
is raised as a `MergeDeskError` whose message is one line that names what is wrong and,
where possible, what to do. The CLI prints `str(error)` alone; the UI shows it in the page.
Anything else that escapes is a bug in MergeDesk and keeps its traceback.

Messages often quote what a person gave (a value, a file name), which may be huge or hold line
breaks: the base class makes every message one line of at most MAX_MESSAGE characters, so no
input can turn an error into megabytes of reply or a fake second line of output.
"""

MAX_MESSAGE = 500  # characters: a long quoted value loses its middle, the problem and the fix stay


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """`text` with its line breaks turned into spaces, cut in the middle to at most `limit` characters.

    Example:
        >>> one_line("unknown merge_method " + repr(["x"] * 1000) + ": choose one of linear, ties", 60)
        "unknown merge_method ['x', 'x', 'x', 'x' … e of linear, ties"
    """
    flat = " ".join(str(text).splitlines())
    if len(flat) <= limit:
        return flat
    head = (limit * 2) // 3
    tail = limit - head - 3
    return f"{flat[:head]} … {flat[len(flat) - tail:]}"


class MergeDeskError(Exception):
    """Base class: the message is the whole story, no traceback needed; always one short line."""

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(message))


class RecipeError(MergeDeskError):
    """The recipe is malformed or asks for something the method cannot do."""


class CheckpointError(MergeDeskError):
    """A model reference cannot be resolved or its weight files cannot be read."""


class DeviceError(MergeDeskError):
    """A device string is malformed or names hardware this machine does not have."""


class OutputError(MergeDeskError):
    """The output folder cannot be written as asked (exists, inside an input, no space)."""


class OutputExists(OutputError):
    """The output folder exists and replacing it was not asked for. The message names the choice, not a switch:
    each front end says how to replace (`replace_hint`), as the CLI (--overwrite) and the app (a checkbox) differ."""

    def replace_hint(self, how: str) -> str:
        return f"{self} ({how})"


class ResourceError(MergeDeskError):
    """The merge would not fit: too little free disk at the output or memory on the device."""


class RerankError(MergeDeskError):
    """A model cannot be loaded as a reranker, or its inputs cannot be scored."""


class MergeCancelled(MergeDeskError):
    """The user stopped the merge; the partial output has been removed."""

    @classmethod
    def check(cls, cancel, message: str) -> None:
        """Raise `message` when the job's cancel flag (a threading.Event, or None: not stoppable) is set."""
        if cancel is not None and cancel.is_set():
            raise cls(message)

class GenerationError(MergeDeskError):
    """A model cannot be loaded as a causal LM, or a prompt, text set or generation setting is unusable."""
