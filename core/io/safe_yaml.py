"""YAML from people, read with a bound on what its aliases may expand to.

    data = load_yaml(text, source="the recipe")     # plain data, or a one-line RecipeError
    docs = load_yaml_documents(text, source="the recipe")   # each `---` document, bounded alike

yaml.safe_load keeps `&a [x, x]` … `[*a, *a]` as one shared object, so a document of a few
hundred bytes can stand for a billion values ("billion laughs"): nothing goes wrong until
something prints or walks it, and then an error message alone takes gigabytes. Here the
composed node graph is measured before anything is built from it: the values it stands for,
each alias counted as all of what it points to, must stay under MAX_VALUES, and an alias may
not sit inside the value it names (a cycle no check could walk). Every recipe, pasted
setting or saved mergekit_config.yml is read through load_yaml.
"""
from __future__ import annotations

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from core.errors import RecipeError

MAX_VALUES = 10_000  # scalars, lists and mappings, aliases expanded; a 100-model recipe is ~2,000


def load_yaml(text: str, *, source: str) -> object:
    """The YAML document `text` as plain data; RecipeError (one line, naming `source`) when it cannot be.

    Example:
        >>> load_yaml("a: &x [1, 2]\\nb: *x", source="the recipe")
        {'a': [1, 2], 'b': [1, 2]}
        >>> load_yaml("[&a [x, x, x], &b [*a, *a, *a], &c [*b, *b, *b], …]", source="the recipe")  # 9 levels
        RecipeError: the recipe stands for more than 10,000 values (a YAML alias *name counts as all it repeats): …
    """
    return _read(lambda: _bounded_load(text, source), source)


def load_yaml_documents(text: str, *, source: str) -> list:
    """Every `---`-separated document of `text` (a multi-stage recipe), each bounded as load_yaml bounds one."""
    return _read(lambda: _bounded_load_all(text, source), source)


def _read(load, source: str):
    """load(), its YAML and value errors turned into one RecipeError line naming `source`."""
    try:
        return load()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]  # ReaderError has no .problem
        raise RecipeError(f"{source} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise RecipeError(f"{source} nests too deeply to be read") from None
    except ValueError as error:  # a YAML scalar Python cannot hold, e.g. an integer of 5,000 digits
        raise RecipeError(f"{source} holds a value that cannot be read: {str(error).splitlines()[0]}") from None


def _bounded_load(text: str, source: str) -> object:
    """Compose the node graph, measure it, and only then build Python objects from it."""
    loader = yaml.SafeLoader(text)  # the reader refuses control characters here already
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _bounded_load_all(text: str, source: str) -> list:
    loader = yaml.SafeLoader(text)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            _check_size(node, source)
            documents.append(loader.construct_document(node))
        return documents
    finally:
        loader.dispose()


def _check_size(root: Node, source: str) -> None:
    """Refuse a graph standing for more than MAX_VALUES values, or holding a cycle; O(distinct nodes)."""
    sizes: dict[int, int] = {}  # id(node) → values it stands for, aliases expanded
    open_ = set()  # nodes entered but not finished: the path from the root (iterative DFS)
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_VALUES:
                raise RecipeError(f"{source} stands for more than {MAX_VALUES:,} values (a YAML alias *name counts "
                                  "as all it repeats): write fewer values or fewer aliases")
        elif key in open_:
            raise RecipeError(f"{source} has a YAML alias inside the value it names (&name [*name]): remove it")
        elif key not in sizes:
            open_.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []
