"""Errors a user can act on.

Every problem with the user's input (a recipe, a model path, a device, an output folder)
is raised as a `MergeDeskError` whose message is one line that names what is wrong and,
where possible, what to do. The CLI prints `str(error)` alone; the UI shows it in the page.
Anything else that escapes is a bug in MergeDesk and keeps its traceback.
"""


class MergeDeskError(Exception):
    """Base class: the message is the whole story, no traceback needed."""


class RecipeError(MergeDeskError):
    """The recipe is malformed or asks for something the method cannot do."""


class CheckpointError(MergeDeskError):
    """A model reference cannot be resolved or its weight files cannot be read."""


class DeviceError(MergeDeskError):
    """A device string is malformed or names hardware this machine does not have."""


class OutputError(MergeDeskError):
    """The output folder cannot be written as asked (exists, inside an input, no space)."""


class ResourceError(MergeDeskError):
    """The merge would not fit: too little free disk at the output or memory on the device."""


class MergeCancelled(MergeDeskError):
    """The user stopped the merge; the partial output has been removed."""
