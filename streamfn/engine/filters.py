"""Lambda/EventBridge event-filter patterns, compiled once into matcher closures (pure logic, no I/O).

A pattern is compiled into a tree of small functions: an *object node* per JSON object in the
pattern (AND across its keys, plus ``$or`` blocks) and a *leaf node* per value list (OR across
its entries). Matching a record is then a walk of those closures with no parsing and almost no
allocation. Semantics follow the EventBridge pattern language that Lambda event filtering uses:

* exact values compare by JSON type and text: ``"300"`` never matches ``300``, and ``300``
  never matches ``300.0`` (Lambda compares numbers by their string representation);
* an event array matches if any element matches; empty arrays hold no values;
* operators other than ``exists`` and ``anything-but`` only match values of their own type
  (``prefix`` only strings, ``numeric`` only numbers);
* ``exists`` looks at leaves only: a key holding an object counts as absent;
* ``anything-but`` needs the key to be present; it matches ``null`` and values of other types.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

__all__ = ["NOT_JSON", "FilterSet"]


class _NotJson:
    """Type of the NOT_JSON sentinel."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Final = _NotJson()
"""Put this under the data key when the record's data is not valid JSON."""

_MISSING: Final = object()

Test = Callable[[Any], bool]
"""Tests one present scalar leaf value (str, int, float, bool or None)."""
Node = Callable[[Any], bool]
"""Tests whatever sits at a path in the event, ``_MISSING`` when nothing does."""

_OPERATORS = ("anything-but", "cidr", "equals-ignore-case", "exists", "numeric", "prefix", "suffix", "wildcard")
_LOWER_BOUNDS = (">", ">=")
_UPPER_BOUNDS = ("<", "<=")


class FilterSet:
    """Filter patterns ORed together, as in a Lambda event source mapping's FilterCriteria."""

    __slots__ = ("_compiled", "_data_key", "_uses_data")

    def __init__(
        self,
        patterns: Sequence[str | Mapping[str, Any]],
        data_key: str = "data",
        max_patterns: int = 10,
    ) -> None:
        if len(patterns) > max_patterns:
            raise ValueError(f"at most {max_patterns} filter patterns are allowed, got {len(patterns)}")
        compiled: list[tuple[Node, bool]] = []
        for index, raw in enumerate(patterns):
            where = f"pattern {index}" if len(patterns) > 1 else "pattern"
            tree = _load(raw, where)
            compiled.append((_compile_object(tree, _Path(where, ())), _mentions(tree, data_key)))
        self._compiled: tuple[tuple[Node, bool], ...] = tuple(compiled)
        self._data_key = data_key
        self._uses_data = any(uses for _, uses in compiled)

    @property
    def uses_data(self) -> bool:
        """True if any pattern looks inside the data key, i.e. the caller must parse the data."""
        return self._uses_data

    def __len__(self) -> int:
        return len(self._compiled)

    def matches(self, event: Mapping[str, Any]) -> bool:
        """True if any pattern matches the event; an empty set matches everything.

        A pattern with a condition on the data key never matches an event whose data is NOT_JSON
        (Lambda drops such records); metadata-only patterns still apply to it.
        """
        if not self._compiled:
            return True
        data_is_json = event.get(self._data_key) is not NOT_JSON
        for node, uses_data in self._compiled:  # noqa: SIM110 - hot path, no generator per record
            if (data_is_json or not uses_data) and node(event):
                return True
        return False


# --- loading and error reporting -------------------------------------------------------------


class _Path:
    """Where in which pattern we are, for error messages only."""

    __slots__ = ("keys", "where")

    def __init__(self, where: str, keys: tuple[str, ...]) -> None:
        self.where = where
        self.keys = keys

    def child(self, key: str) -> _Path:
        return _Path(self.where, (*self.keys, key))

    def error(self, problem: str) -> ValueError:
        at = f" at {'.'.join(self.keys)}" if self.keys else ""
        return ValueError(f"{self.where}{at}: {problem}")


def _load(raw: str | Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """A pattern given as JSON text is parsed (duplicate keys: the last wins, as in Lambda)."""
    tree: Any = raw
    if isinstance(raw, str):
        try:
            tree = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(tree, Mapping):
        raise ValueError(f"{where}: must be a JSON object, got {_kind(tree)}")
    return tree


def _mentions(tree: Mapping[str, Any], data_key: str) -> bool:
    """Does the pattern put a condition on the data key (directly or in a top-level $or)?"""
    if data_key in tree:
        return True
    branches = tree.get("$or")
    return isinstance(branches, list) and _is_or_block(branches) and any(_mentions(b, data_key) for b in branches)


def _is_or_block(value: Any) -> bool:
    return isinstance(value, list) and len(value) >= 2 and all(isinstance(b, Mapping) for b in value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool)) or _is_number(value)


# --- object nodes: AND across keys, $or across branches --------------------------------------


def _compile_object(pattern: Mapping[str, Any], path: _Path) -> Node:
    if not pattern:
        raise path.error("an empty object matches nothing; name at least one field")
    fields: list[tuple[str, Node]] = []
    or_blocks: list[tuple[Node, ...]] = []
    for key, value in pattern.items():
        if not isinstance(key, str):
            raise path.error(f"field names must be strings, got {key!r}")
        here = path.child(key)
        if key == "$or" and _is_or_block(value):
            # Like EventBridge, "$or" is only an OR block when it holds two or more objects;
            # otherwise it is an ordinary field name.
            or_blocks.append(_compile_or(value, here))
        elif isinstance(value, Mapping):
            fields.append((key, _compile_object(value, here)))
        elif isinstance(value, list):
            fields.append((key, _compile_leaf(value, here)))
        else:
            raise here.error(f"must be an object or a list of values to match, got {_kind(value)}")
    return _object_node(tuple(fields), tuple(or_blocks))


def _compile_or(branches: list[Any], path: _Path) -> tuple[Node, ...]:
    return tuple(_compile_object(b, _Path(path.where, (*path.keys[:-1], f"$or[{i}]"))) for i, b in enumerate(branches))


_EMPTY: Final[Mapping[str, Any]] = {}


def _object_node(fields: tuple[tuple[str, Node], ...], or_blocks: tuple[tuple[Node, ...], ...]) -> Node:
    def on_object(obj: Mapping[str, Any]) -> bool:
        for key, child in fields:
            if not child(obj.get(key, _MISSING)):
                return False
        for branches in or_blocks:
            for branch in branches:
                if branch(obj):
                    break
            else:
                return False
        return True

    def node(value: Any) -> bool:
        if isinstance(value, Mapping):
            return on_object(value)
        if isinstance(value, list) and value:
            # Each element on its own, so two fields must match inside the same element
            # (EventBridge's array consistency).
            for element in value:  # noqa: SIM110 - hot path, no generator per record
                if node(element):
                    return True
            return False
        # Missing, a scalar or an empty list: nothing below this path exists.
        return on_object(_EMPTY)

    return node


# --- leaf nodes: OR across the listed values and operators -----------------------------------


def _compile_leaf(entries: list[Any], path: _Path) -> Node:
    if not entries:
        raise path.error("an empty list matches nothing; list at least one value")
    strings: set[str] = set()
    numbers: set[str] = set()
    literals: set[Any] = set()  # None, True, False
    ops: list[Test] = []
    when_absent = False
    for entry in entries:
        if isinstance(entry, str):
            strings.add(entry)
        elif entry is None or isinstance(entry, bool):
            literals.add(entry)
        elif _is_number(entry):
            numbers.add(_number_text(_finite(entry, path)))
        elif isinstance(entry, Mapping):
            exists, op = _compile_operator(entry, path)
            if exists is False:
                when_absent = True
            elif op is not None:
                ops.append(op)
        else:
            raise path.error(
                f"values to match must be strings, numbers, true, false, null or operator objects, got {_kind(entry)}"
            )
    return _leaf_node(_exact_test(frozenset(strings), frozenset(numbers), frozenset(literals), tuple(ops)), when_absent)


def _leaf_node(test: Test, when_absent: bool) -> Node:
    def node(value: Any) -> bool:
        if value is _MISSING or isinstance(value, Mapping):
            return when_absent  # exists looks at leaves only: an object here is no leaf
        if isinstance(value, list):
            seen = False
            for leaf in _leaves(value):
                if test(leaf):
                    return True
                seen = True
            return when_absent and not seen
        return test(value)

    return node


def _leaves(values: list[Any]) -> Iterator[Any]:
    """The scalar values of an event array, nested arrays flattened, objects skipped."""
    for value in values:
        if isinstance(value, list):
            yield from _leaves(value)
        elif not isinstance(value, Mapping):
            yield value


def _number_text(value: int | float) -> str:
    """The JSON text of a parsed number: Lambda compares exact numbers as text (300 != 300.0)."""
    return repr(value) if isinstance(value, float) else str(value)


def _finite(value: int | float, path: _Path) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise path.error(f"numbers must be finite, got {value}")
    return value


def _exact_test(
    strings: frozenset[str], numbers: frozenset[str], literals: frozenset[Any], ops: tuple[Test, ...]
) -> Test:
    """One test for a value list: set lookups for exact values, then each operator in turn."""

    def test(value: Any) -> bool:
        if isinstance(value, str):
            if value in strings:
                return True
        elif value is None or isinstance(value, bool):
            if value in literals:
                return True
        elif isinstance(value, (int, float)) and numbers and _number_text(value) in numbers:
            return True
        for op in ops:  # noqa: SIM110 - hot path, no generator per record
            if op(value):
                return True
        return False

    return test


# --- operators -------------------------------------------------------------------------------


def _compile_operator(entry: Mapping[str, Any], path: _Path) -> tuple[bool | None, Test | None]:
    """Returns (exists flag or None, test); ``exists: false`` has no test, it only allows absence."""
    if len(entry) != 1:
        raise path.error(f"an operator object needs exactly one key, got {sorted(entry) or 'none'}")
    ((name, operand),) = entry.items()
    if name == "exists":
        if not isinstance(operand, bool):
            raise path.error(f"exists: expected true or false, got {_kind(operand)}")
        return operand, (_present if operand else None)
    compilers: dict[str, Callable[[Any, _Path], Test]] = {
        "prefix": _compile_prefix,
        "suffix": _compile_suffix,
        "equals-ignore-case": _compile_equals_ignore_case,
        "anything-but": _compile_anything_but,
        "numeric": _compile_numeric,
        "wildcard": _compile_wildcard,
        "cidr": _compile_cidr,
    }
    compile_op = compilers.get(name)
    if compile_op is None:
        raise path.error(f"unknown operator {name!r} (expected one of: {', '.join(_OPERATORS)})")
    return None, compile_op(operand, path)


def _present(value: Any) -> bool:
    return True


def _string_operand(operator: str, operand: Any, path: _Path) -> str:
    if not isinstance(operand, str):
        raise path.error(f"{operator}: expected a string, got {_kind(operand)}")
    return operand


def _ignore_case_operand(operator: str, operand: Any, path: _Path) -> str | None:
    """For ``{"prefix": {"equals-ignore-case": "x"}}``: the string, or None if not that form."""
    if not isinstance(operand, Mapping):
        return None
    if list(operand) != ["equals-ignore-case"]:
        raise path.error(f"{operator}: the only nested operator allowed is equals-ignore-case, got {sorted(operand)}")
    return _string_operand(f"{operator}/equals-ignore-case", operand["equals-ignore-case"], path)


def _compile_prefix(operand: Any, path: _Path) -> Test:
    folded = _ignore_case_operand("prefix", operand, path)
    if folded is not None:
        return _prefix_ignore_case(folded.casefold())
    return _prefix(_string_operand("prefix", operand, path))


def _compile_suffix(operand: Any, path: _Path) -> Test:
    folded = _ignore_case_operand("suffix", operand, path)
    if folded is not None:
        return _suffix_ignore_case(folded.casefold())
    return _suffix(_string_operand("suffix", operand, path))


def _compile_equals_ignore_case(operand: Any, path: _Path) -> Test:
    return _equals_ignore_case(_string_operand("equals-ignore-case", operand, path).casefold())


def _prefix(prefix: str) -> Test:
    return lambda value: isinstance(value, str) and value.startswith(prefix)


def _suffix(suffix: str) -> Test:
    return lambda value: isinstance(value, str) and value.endswith(suffix)


def _prefix_ignore_case(folded: str) -> Test:
    return lambda value: isinstance(value, str) and value.casefold().startswith(folded)


def _suffix_ignore_case(folded: str) -> Test:
    return lambda value: isinstance(value, str) and value.casefold().endswith(folded)


def _equals_ignore_case(folded: str) -> Test:
    return lambda value: isinstance(value, str) and value.casefold() == folded


def _any_of(tests: Sequence[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    return lambda value: any(test(value) for test in tests)


# anything-but ---------------------------------------------------------------------------------


def _compile_anything_but(operand: Any, path: _Path) -> Test:
    """Matches any present leaf (null and other types included) that the inner condition rejects."""
    if isinstance(operand, Mapping):
        return _negate(_anything_but_inner(operand, path))
    values = operand if isinstance(operand, list) else [operand]
    if not values:
        raise path.error("anything-but: the list is empty")
    if all(isinstance(v, str) for v in values):
        excluded = _exact_test(frozenset(values), frozenset(), frozenset(), ())
    elif all(_is_number(v) for v in values):
        excluded = _exact_test(frozenset(), frozenset(_number_text(_finite(v, path)) for v in values), frozenset(), ())
    else:
        raise path.error(
            "anything-but: expected a string, a number, a list of only strings or only numbers, "
            f"or an object with prefix, suffix, equals-ignore-case or wildcard; got {operand!r}"
        )
    return _negate(excluded)


def _anything_but_inner(operand: Mapping[str, Any], path: _Path) -> Test:
    if len(operand) != 1:
        raise path.error(f"anything-but: the object needs exactly one key, got {sorted(operand) or 'none'}")
    ((name, inner),) = operand.items()
    makers: dict[str, Callable[[str], Test]] = {
        "prefix": _prefix,
        "suffix": _suffix,
        "equals-ignore-case": lambda s: _equals_ignore_case(s.casefold()),
        "wildcard": lambda s: _wildcard(_wildcard_regex(s, path)),
    }
    make = makers.get(name)
    if make is None:
        raise path.error(
            f"anything-but: unsupported nested operator {name!r} "
            "(expected prefix, suffix, equals-ignore-case or wildcard)"
        )
    strings = inner if isinstance(inner, list) else [inner]
    if not strings or not all(isinstance(s, str) for s in strings):
        raise path.error(f"anything-but/{name}: expected a string or a non-empty list of strings, got {inner!r}")
    if name in ("prefix", "suffix") and not all(strings):
        raise path.error(f"anything-but/{name}: an empty {name} is not allowed")
    return _any_of([make(s) for s in strings])


def _negate(test: Test) -> Test:
    return lambda value: not test(value)


# numeric --------------------------------------------------------------------------------------


def _compile_numeric(operand: Any, path: _Path) -> Test:
    """``["=", x]``, one bound, or a lower bound (>, >=) followed by an upper bound (<, <=)."""
    if not isinstance(operand, list) or not operand:
        raise path.error(f'numeric: expected a list like [">", 0, "<=", 5], got {operand!r}')
    if len(operand) not in (2, 4):
        raise path.error(f"numeric: expected one operator and number, or two bounds; got {operand!r}")
    pairs = [(operand[i], operand[i + 1]) for i in range(0, len(operand), 2)]
    for op, number in pairs:
        if op not in ("=", *_LOWER_BOUNDS, *_UPPER_BOUNDS):
            raise path.error(f"numeric: unknown comparison {op!r} (expected =, <, <=, >, >=)")
        if not _is_number(number):
            raise path.error(f"numeric: the value after {op!r} must be a number, got {number!r}")
        _finite(number, path)
    if len(pairs) == 1:
        ((op, number),) = pairs
        return _numeric_bound(op, float(number))
    (low_op, low), (high_op, high) = pairs
    if low_op not in _LOWER_BOUNDS or high_op not in _UPPER_BOUNDS:
        raise path.error(f"numeric: a range is a lower bound (>, >=) then an upper bound (<, <=), got {operand!r}")
    if not low < high:
        raise path.error(f"numeric: the lower bound {low} must be less than the upper bound {high}")
    return _numeric_range(_numeric_bound(low_op, float(low)), _numeric_bound(high_op, float(high)))


def _numeric_bound(op: str, bound: float) -> Test:
    if op == "=":
        return lambda v: _is_number(v) and v == bound
    if op == ">":
        return lambda v: _is_number(v) and v > bound
    if op == ">=":
        return lambda v: _is_number(v) and v >= bound
    if op == "<":
        return lambda v: _is_number(v) and v < bound
    return lambda v: _is_number(v) and v <= bound


def _numeric_range(low: Test, high: Test) -> Test:
    return lambda v: low(v) and high(v)


# wildcard -------------------------------------------------------------------------------------


def _compile_wildcard(operand: Any, path: _Path) -> Test:
    return _wildcard(_wildcard_regex(_string_operand("wildcard", operand, path), path))


def _wildcard_regex(text: str, path: _Path) -> re.Pattern[str]:
    r"""``*`` matches any run of characters; ``\*`` is a literal star, ``\\`` a backslash."""
    parts: list[str] = []
    literal: list[str] = []
    chars = iter(enumerate(text))
    previous_star = False
    for index, char in chars:
        if char == "\\":
            escaped = next(chars, (index, ""))[1]
            if escaped not in ("*", "\\"):
                raise path.error(
                    f"wildcard: invalid escape at position {index} in {text!r} (only \\* and \\\\ are allowed)"
                )
            literal.append(escaped)
            previous_star = False
        elif char == "*":
            if previous_star:
                raise path.error(f"wildcard: consecutive * at position {index} in {text!r}")
            parts.append(re.escape("".join(literal)))
            literal.clear()
            parts.append(".*")
            previous_star = True
        else:
            literal.append(char)
            previous_star = False
    parts.append(re.escape("".join(literal)))
    return re.compile("".join(parts), re.DOTALL)


def _wildcard(regex: re.Pattern[str]) -> Test:
    fullmatch = regex.fullmatch
    return lambda value: isinstance(value, str) and fullmatch(value) is not None


# cidr -----------------------------------------------------------------------------------------


def _compile_cidr(operand: Any, path: _Path) -> Test:
    text = _string_operand("cidr", operand, path)
    if text.count("/") != 1:
        raise path.error(f"cidr: expected an address block like 10.0.0.0/24, got {text!r}")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise path.error(f"cidr: {exc}") from None

    def in_network(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            return ipaddress.ip_address(value) in network
        except ValueError:
            return False

    return in_network
