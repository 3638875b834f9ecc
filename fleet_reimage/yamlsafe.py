"""Safe YAML loading that remembers where every value came from.

- Only plain data: mappings, sequences, strings, numbers, booleans, null, timestamps.
  No tags that construct objects (PyYAML's SafeLoader already refuses them).
- The document may hold at most ``MAX_EXPANDED_NODES`` nodes, counting every alias as the
  nodes it stands for. The count is kept while the node tree is built, so a huge flat list
  or a "billion laughs" file is refused as soon as the budget is spent, where reading
  stopped, before the rest of the file is even parsed.
- Duplicate keys are errors (YAML allows the later one to win silently).
- Mappings load as ``MarkedMap``: a dict that also knows the position of each key and value,
  so validation can point at a line and column.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from fleet_reimage.errors import InputError, Problem

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_EXPANDED_NODES = 200_000

Position = tuple[int, int]  # 1-based line, column


class MarkedMap(dict[str, Any]):
    """A mapping that remembers the position of each key and of each value."""

    key_positions: dict[str, Position]
    value_positions: dict[str, Position]
    position: Position

    def __init__(self) -> None:
        super().__init__()
        self.key_positions = {}
        self.value_positions = {}
        self.position = (1, 1)


class MarkedList(list[Any]):
    """A sequence that remembers the position of each item."""

    item_positions: list[Position]
    position: Position

    def __init__(self) -> None:
        super().__init__()
        self.item_positions = []
        self.position = (1, 1)


def _position(node: Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _MarkedLoader(yaml.SafeLoader):
    """SafeLoader building MarkedMap/MarkedList and refusing duplicate keys."""

    def __init__(self, stream: str, filename: str, budget: int = MAX_EXPANDED_NODES) -> None:
        super().__init__(stream)
        self.filename = filename
        self.problems: list[Problem] = []
        self.budget = budget
        self.nodes = 0  # composed so far, each alias counted as the nodes it expands to
        self._anchored_sizes: dict[int, int] = {}  # id(anchored node) -> its expanded size

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        """As PyYAML's, counting nodes against the budget as they are built."""
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        alias = isinstance(event, AliasEvent)
        before = self.nodes
        if not alias:
            self._count(1, event.start_mark, alias=False)
        node = super().compose_node(parent, index)
        if alias:
            # A node still being built (a recursive alias) has no size yet: count it once.
            self._count(self._anchored_sizes.get(id(node), 1), event.start_mark, alias=True)
        elif event.anchor is not None:
            self._anchored_sizes[id(node)] = self.nodes - before
        return node

    def _count(self, size: int, mark: Any, *, alias: bool) -> None:
        self.nodes += size
        if self.nodes <= self.budget:
            return
        why = (
            "this alias expands past it; is this a billion-laughs file?"
            if alias
            else "reading stopped here"
        )
        raise InputError(
            [
                Problem(
                    self.filename,
                    mark.line + 1,
                    mark.column + 1,
                    "",
                    f"too many values (limit {self.budget}, counting anchors and aliases "
                    f"expanded): {why}",
                )
            ]
        )

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """As SafeLoader's, but a value the standard constructors cannot build (``!!int abc``,
        a date such as 2026-02-30, ``!!bool maybe``) is a YAML error at that node, not a
        ValueError/KeyError escaping from PyYAML. The value itself is not echoed."""
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            tag = node.tag.rsplit(":", 1)[-1]
            detail = f" ({exc})" if tag == "timestamp" and isinstance(exc, ValueError) else ""
            raise ConstructorError(
                None, None, f"cannot read this value as {tag}{detail}", node.start_mark
            ) from None

    def construct_marked_mapping(self, node: Node) -> MarkedMap:
        if not isinstance(node, MappingNode):  # an explicit !!map tag on a scalar or list
            raise ConstructorError(None, None, "expected a mapping", node.start_mark)
        self.flatten_mapping(node)  # resolves YAML merge keys ("<<")
        result = MarkedMap()
        result.position = _position(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            if key in result:
                line, column = _position(key_node)
                self.problems.append(
                    Problem(
                        self.filename,
                        line,
                        column,
                        key,
                        f"duplicate key {key!r} (first at line {result.key_positions[key][0]})",
                    )
                )
                continue
            result[key] = self.construct_object(value_node, deep=True)
            result.key_positions[key] = _position(key_node)
            result.value_positions[key] = _position(value_node)
        return result

    def construct_marked_sequence(self, node: Node) -> MarkedList:
        if not isinstance(node, SequenceNode):  # an explicit !!seq tag on a scalar or mapping
            raise ConstructorError(None, None, "expected a list", node.start_mark)
        result = MarkedList()
        result.position = _position(node)
        for item in node.value:
            result.append(self.construct_object(item, deep=True))
            result.item_positions.append(_position(item))
        return result


_MarkedLoader.add_constructor("tag:yaml.org,2002:map", _MarkedLoader.construct_marked_mapping)
_MarkedLoader.add_constructor("tag:yaml.org,2002:seq", _MarkedLoader.construct_marked_sequence)


def _reader_problem(exc: yaml.reader.ReaderError, text: str, filename: str) -> Problem:
    """Where an unacceptable character is, as line and column (PyYAML gives an offset)."""
    pos = exc.position
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    code = ord(exc.character) if isinstance(exc.character, str) else exc.character
    return Problem(
        filename,
        line,
        column,
        "",
        f"not valid YAML: unacceptable character #x{code:04x}: {exc.reason}",
    )


def load_marked_yaml(text: str, filename: str, *, budget: int = MAX_EXPANDED_NODES) -> Any:
    """Parse one YAML document into plain data with positions; InputError when it cannot.

    ``budget``: the most nodes the document may hold, aliases counted expanded."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise InputError(
            [
                Problem(
                    filename,
                    None,
                    None,
                    "",
                    f"file is larger than {MAX_DOCUMENT_BYTES // 1024} KiB",
                )
            ]
        )
    try:
        # The reader checks for unprintable characters as soon as it is built.
        loader = _MarkedLoader(text, filename, budget)
    except yaml.reader.ReaderError as exc:
        raise InputError([_reader_problem(exc, text, filename)]) from None
    try:
        root = loader.get_single_node()
        if root is None:
            raise InputError([Problem(filename, 1, 1, "", "the file is empty")])
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line_no = mark.line + 1 if mark else None
        column_no = mark.column + 1 if mark else None
        what = " ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        raise InputError(
            [Problem(filename, line_no, column_no, "", f"not valid YAML: {what}")]
        ) from None
    except yaml.YAMLError as exc:
        raise InputError([Problem(filename, None, None, "", f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise InputError(
            [Problem(filename, None, None, "", "the YAML is nested too deeply")]
        ) from None
    finally:
        loader.dispose()
    if loader.problems:
        raise InputError(loader.problems)
    return data
