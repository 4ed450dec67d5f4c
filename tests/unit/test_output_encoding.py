"""Whatever a handler returns, encoding its output either round-trips as JSON or raises SinkError."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streamfn.connectors.shared.ndjson import encode_ndjson
from streamfn.errors import SinkError

json_leaves = st.one_of(
    st.none(), st.booleans(), st.text(alphabet=st.characters(blacklist_categories=["Cs"])),
    st.integers(min_value=-(2**200), max_value=2**200), st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=5), inner, max_size=4), max_leaves=12)
foreign_leaves = st.one_of(
    st.decimals(allow_nan=False).map(Decimal), st.frozensets(st.integers(), max_size=2).map(set),
    st.binary(max_size=4), st.builds(object), st.just("\udcff"),
)


def bury(leaf: Any, depth: int) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k": leaf}
    return leaf


@given(st.lists(json_values, max_size=5))
def test_json_values_round_trip_one_per_line(items: list[Any]) -> None:
    lines = encode_ndjson(items).splitlines()
    assert [json.loads(line) for line in lines] == items


@given(st.lists(json_values, max_size=3), foreign_leaves, st.integers(min_value=1, max_value=4), st.data())
def test_a_value_json_cannot_hold_raises_sink_error_naming_the_item(
    items: list[Any], leaf: Any, depth: int, data: st.DataObject,
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(items)))
    items.insert(index, bury(leaf, depth))
    try:
        encode_ndjson(items)
    except SinkError as exc:
        assert f"output item {index} cannot be written as JSON" in str(exc)
    else:
        raise AssertionError("encoded a value JSON cannot hold")
