"""Environment interpolation in config values."""

import pytest

from streamfn.interpolate import MissingVariable, interpolate


def test_variables_defaults_and_escapes() -> None:
    env = {"HOST": "h", "EMPTY": ""}
    doc = {"a": "${HOST}:9092", "b": ["${NOPE:-d}", "$${HOST}"], "c": {"d": "${EMPTY:-fallback}"}, "n": 3}
    assert interpolate(doc, env) == {"a": "h:9092", "b": ["d", "${HOST}"], "c": {"d": "fallback"}, "n": 3}


def test_missing_variable_names_the_field() -> None:
    with pytest.raises(MissingVariable) as info:
        interpolate({"source": {"endpoint_url": "${KINESIS_URL}"}}, {})
    assert info.value.name == "KINESIS_URL"
    assert info.value.path == "source.endpoint_url"
