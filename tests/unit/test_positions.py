"""A position has one text form: what logs, status and errors print and what parses back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfn import Position, Record

sequences = st.integers(min_value=0, max_value=2**128 - 1)


@given(sequences, st.integers(min_value=0, max_value=2**31))
def test_the_text_form_parses_back(sequence: int, sub: int) -> None:
    position = Position(sequence, sub)
    assert Position.parse(str(position)) == position
    assert Record("s", sequence, "k", b"", 0.0, sub).identifier == str(position)


@given(sequences, st.integers(min_value=0, max_value=40 - 1))
def test_zero_padded_sequence_numbers_parse_to_the_same_position(sequence: int, pad: int) -> None:
    text = str(sequence).zfill(min(40, len(str(sequence)) + pad))
    assert Position.parse(text) == Position(sequence)


@pytest.mark.parametrize("text", ["", "12a", "-3", "1:", ":1", "1:2:3", " 7", "1" * 41])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a position"):
        Position.parse(text)


def test_a_sub_record_reads_sequence_colon_sub() -> None:
    assert (str(Position(42)), str(Position(42, 3))) == ("42", "42:3")
