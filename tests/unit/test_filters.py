"""Event filter patterns: every operator against AWS's documented examples and edge cases."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfn.engine.filters import NOT_JSON, FilterSet


def rec(data: Any = None, **meta: Any) -> dict[str, Any]:
    """A Kinesis-shaped event as the shard loop builds it."""
    event: dict[str, Any] = {"partitionKey": "k1", "sequenceNumber": "12", "shardId": "shardId-000"}
    event.update(meta)
    if data is not None:
        event["data"] = data
    return event


EC2: dict[str, Any] = {
    "source": "aws.ec2",
    "time": "2017-10-02T16:24:49Z",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"],
    "detail": {"c-count": 5, "d-count": 3, "x-limit": 301.8, "source-ip": "10.0.0.33", "state": "running"},
}

# (id, pattern, data, expected): the pattern looks at `data` unless it names metadata keys.
CASES: list[tuple[str, dict[str, Any], Any, bool]] = [
    # exact values
    ("string-equal", {"data": {"Name": ["Alice"]}}, {"Name": "Alice"}, True),
    ("string-case-sensitive", {"data": {"Name": ["Alice"]}}, {"Name": "alice"}, False),
    ("string-or-list", {"data": {"PaymentType": ["Credit", "Debit"]}}, {"PaymentType": "Debit"}, True),
    ("string-or-list-miss", {"data": {"PaymentType": ["Credit", "Debit"]}}, {"PaymentType": "Cash"}, False),
    ("empty-string", {"data": {"LastName": [""]}}, {"LastName": ""}, True),
    ("empty-string-vs-missing", {"data": {"LastName": [""]}}, {}, False),
    ("empty-string-vs-null", {"data": {"LastName": [""]}}, {"LastName": None}, False),
    ("null", {"data": {"UserID": [None]}}, {"UserID": None}, True),
    ("null-vs-missing", {"data": {"UserID": [None]}}, {}, False),
    ("null-vs-empty-string", {"data": {"UserID": [None]}}, {"UserID": ""}, False),
    ("number-equal", {"data": {"n": [300]}}, {"n": 300}, True),
    ("number-never-matches-string", {"data": {"n": [300]}}, {"n": "300"}, False),
    ("string-never-matches-number", {"data": {"n": ["300"]}}, {"n": 300}, False),
    ("number-text-300-vs-300.0", {"data": {"n": [300]}}, {"n": 300.0}, False),
    ("number-float-equal", {"data": {"n": [301.8]}}, {"n": 301.8}, True),
    ("number-negative", {"data": {"n": [-5]}}, {"n": -5}, True),
    ("boolean-true", {"data": {"ok": [True]}}, {"ok": True}, True),
    ("boolean-not-one", {"data": {"ok": [True]}}, {"ok": 1}, False),
    ("one-not-boolean", {"data": {"ok": [1]}}, {"ok": True}, False),
    ("boolean-false", {"data": {"ok": [False]}}, {"ok": False}, True),
    ("boolean-vs-string", {"data": {"ok": [True]}}, {"ok": "true"}, False),
    ("and-across-keys", {"data": {"a": ["x"], "b": ["y"]}}, {"a": "x", "b": "y"}, True),
    ("and-across-keys-one-fails", {"data": {"a": ["x"], "b": ["y"]}}, {"a": "x", "b": "z"}, False),
    ("and-missing-key", {"data": {"a": ["x"], "b": ["y"]}}, {"a": "x"}, False),
    ("nested-object", {"data": {"detail": {"state": ["running"]}}}, EC2, True),
    ("nested-object-miss", {"data": {"detail": {"state": ["stopped"]}}}, EC2, False),
    ("nested-path-not-object", {"data": {"detail": {"state": ["x"]}}}, {"detail": "flat"}, False),
    ("leaf-pattern-vs-object", {"data": {"detail": ["running"]}}, EC2, False),
    ("extra-event-fields-ignored", {"data": {"source": ["aws.ec2"]}}, EC2, True),
    ("mixed-types-in-list", {"data": {"v": ["a", 7, None]}}, {"v": 7}, True),
    # arrays in the event
    ("array-any-element", {"data": {"resources": [EC2["resources"][0]]}}, EC2, True),
    ("array-intersection", {"data": {"tags": ["b", "z"]}}, {"tags": ["a", "b"]}, True),
    ("array-no-intersection", {"data": {"tags": ["y", "z"]}}, {"tags": ["a", "b"]}, False),
    ("array-empty-vs-null", {"data": {"tags": [None]}}, {"tags": []}, False),
    ("array-nested-arrays", {"data": {"tags": ["c"]}}, {"tags": [["a"], ["b", ["c"]]]}, True),
    (
        "array-of-objects",
        {"data": {"employees": {"firstName": ["Anna"]}}},
        {"employees": [{"firstName": "John"}, {"firstName": "Anna"}]},
        True,
    ),
    (
        "array-consistency",
        {"data": {"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}}},
        {"employees": [{"firstName": "Anna", "lastName": "Smith"}, {"firstName": "Peter", "lastName": "Jones"}]},
        False,
    ),
    (
        "array-same-element",
        {"data": {"employees": {"firstName": ["Anna"], "lastName": ["Smith"]}}},
        {"employees": [{"firstName": "John", "lastName": "Doe"}, {"firstName": "Anna", "lastName": "Smith"}]},
        True,
    ),
    ("array-numeric-any", {"data": {"n": [{"numeric": [">", 10]}]}}, {"n": [1, 2, 30]}, True),
    # prefix / suffix / equals-ignore-case
    ("prefix", {"data": {"time": [{"prefix": "2017-10-02"}]}}, EC2, True),
    ("prefix-miss", {"data": {"time": [{"prefix": "2017-10-03"}]}}, EC2, False),
    ("prefix-only-strings", {"data": {"n": [{"prefix": "12"}]}}, {"n": 123}, False),
    ("prefix-empty-matches-any-string", {"data": {"s": [{"prefix": ""}]}}, {"s": "x"}, True),
    (
        "prefix-ignore-case",
        {"data": {"service": [{"prefix": {"equals-ignore-case": "EventB"}}]}},
        {"service": "eventbridge"},
        True,
    ),
    (
        "prefix-ignore-case-miss",
        {"data": {"service": [{"prefix": {"equals-ignore-case": "EventB"}}]}},
        {"service": "sns"},
        False,
    ),
    ("suffix", {"data": {"FileName": [{"suffix": ".png"}]}}, {"FileName": "cat.png"}, True),
    ("suffix-case-sensitive", {"data": {"FileName": [{"suffix": ".png"}]}}, {"FileName": "cat.PNG"}, False),
    (
        "suffix-ignore-case",
        {"data": {"FileName": [{"suffix": {"equals-ignore-case": ".png"}}]}},
        {"FileName": "cat.PNG"},
        True,
    ),
    ("equals-ignore-case", {"data": {"Name": [{"equals-ignore-case": "alice"}]}}, {"Name": "ALICE"}, True),
    ("equals-ignore-case-miss", {"data": {"Name": [{"equals-ignore-case": "alice"}]}}, {"Name": "alicia"}, False),
    ("equals-ignore-case-not-number", {"data": {"n": [{"equals-ignore-case": "1"}]}}, {"n": 1}, False),
    # anything-but
    ("anything-but-string", {"data": {"state": [{"anything-but": "initializing"}]}}, {"state": "running"}, True),
    (
        "anything-but-string-same",
        {"data": {"state": [{"anything-but": "initializing"}]}},
        {"state": "initializing"},
        False,
    ),
    ("anything-but-missing-key", {"data": {"state": [{"anything-but": "initializing"}]}}, {}, False),
    ("anything-but-null-value", {"data": {"state": [{"anything-but": "initializing"}]}}, {"state": None}, True),
    ("anything-but-number", {"data": {"x": [{"anything-but": 123}]}}, {"x": 124}, True),
    ("anything-but-number-same", {"data": {"x": [{"anything-but": 123}]}}, {"x": 123}, False),
    ("anything-but-number-vs-string", {"data": {"x": [{"anything-but": 123}]}}, {"x": "123"}, True),
    (
        "anything-but-list",
        {"data": {"state": [{"anything-but": ["stopped", "overloaded"]}]}},
        {"state": "running"},
        True,
    ),
    (
        "anything-but-list-hit",
        {"data": {"state": [{"anything-but": ["stopped", "overloaded"]}]}},
        {"state": "stopped"},
        False,
    ),
    ("anything-but-number-list", {"data": {"x": [{"anything-but": [100, 200, 300]}]}}, {"x": 200}, False),
    ("anything-but-array-any-other", {"data": {"t": [{"anything-but": "a"}]}}, {"t": ["a", "b"]}, True),
    ("anything-but-array-only-excluded", {"data": {"t": [{"anything-but": "a"}]}}, {"t": ["a"]}, False),
    ("anything-but-prefix", {"data": {"Region": [{"anything-but": {"prefix": "us-"}}]}}, {"Region": "eu-west-1"}, True),
    (
        "anything-but-prefix-hit",
        {"data": {"Region": [{"anything-but": {"prefix": "us-"}}]}},
        {"Region": "us-east-1"},
        False,
    ),
    ("anything-but-prefix-number", {"data": {"state": [{"anything-but": {"prefix": "init"}}]}}, {"state": 12}, True),
    (
        "anything-but-prefix-list",
        {"data": {"s": [{"anything-but": {"prefix": ["init", "test"]}}]}},
        {"s": "test-1"},
        False,
    ),
    (
        "anything-but-suffix",
        {"data": {"FileName": [{"anything-but": {"suffix": ".png"}}]}},
        {"FileName": "a.jpg"},
        True,
    ),
    (
        "anything-but-suffix-hit",
        {"data": {"FileName": [{"anything-but": {"suffix": ".png"}}]}},
        {"FileName": "a.png"},
        False,
    ),
    (
        "anything-but-ignore-case",
        {"data": {"state": [{"anything-but": {"equals-ignore-case": "initializing"}}]}},
        {"state": "INITIALIZING"},
        False,
    ),
    (
        "anything-but-ignore-case-list",
        {"data": {"state": [{"anything-but": {"equals-ignore-case": ["a", "B"]}}]}},
        {"state": "c"},
        True,
    ),
    (
        "anything-but-wildcard",
        {"data": {"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]}},
        {"FilePath": "/usr/lib/x"},
        False,
    ),
    (
        "anything-but-wildcard-other",
        {"data": {"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]}},
        {"FilePath": "/bin/x"},
        True,
    ),
    (
        "anything-but-wildcard-number",
        {"data": {"FilePath": [{"anything-but": {"wildcard": "*/dir/*"}}]}},
        {"FilePath": 123},
        True,
    ),
    (
        "anything-but-wildcard-empty",
        {"data": {"FilePath": [{"anything-but": {"wildcard": ""}}]}},
        {"FilePath": "x"},
        True,
    ),
    # numeric
    ("numeric-equals", {"data": {"Price": [{"numeric": ["=", 100]}]}}, {"Price": 100}, True),
    ("numeric-equals-float", {"data": {"Price": [{"numeric": ["=", 100]}]}}, {"Price": 100.0}, True),
    ("numeric-equals-exponent", {"data": {"x-limit": [{"numeric": ["=", 3.018e2]}]}}, EC2["detail"], True),
    ("numeric-range", {"data": {"Price": [{"numeric": [">", 10, "<=", 20]}]}}, {"Price": 20}, True),
    ("numeric-range-low-open", {"data": {"Price": [{"numeric": [">", 10, "<=", 20]}]}}, {"Price": 10}, False),
    ("numeric-range-high", {"data": {"Price": [{"numeric": [">", 10, "<=", 20]}]}}, {"Price": 20.5}, False),
    ("numeric-ge", {"data": {"n": [{"numeric": [">=", 5]}]}}, {"n": 5}, True),
    ("numeric-lt", {"data": {"n": [{"numeric": ["<", 10]}]}}, {"n": 9.999}, True),
    ("numeric-lt-miss", {"data": {"n": [{"numeric": ["<", 10]}]}}, {"n": 10}, False),
    ("numeric-le-negative", {"data": {"n": [{"numeric": ["<=", -1]}]}}, {"n": -1.5}, True),
    ("numeric-string-value", {"data": {"n": [{"numeric": [">", 0]}]}}, {"n": "5"}, False),
    ("numeric-bool-value", {"data": {"n": [{"numeric": [">", 0]}]}}, {"n": True}, False),
    ("numeric-missing", {"data": {"n": [{"numeric": [">", 0]}]}}, {}, False),
    ("numeric-or-exact", {"data": {"n": [{"numeric": [">", 100]}, 5]}}, {"n": 5}, True),
    # exists
    ("exists-true", {"data": {"detail": {"c-count": [{"exists": True}]}}}, EC2, True),
    ("exists-true-missing", {"data": {"detail": {"e-count": [{"exists": True}]}}}, EC2, False),
    ("exists-true-null", {"data": {"v": [{"exists": True}]}}, {"v": None}, True),
    ("exists-true-object", {"data": {"v": [{"exists": True}]}}, {"v": {"c1": 100}}, False),
    ("exists-false-missing", {"data": {"detail": {"e-count": [{"exists": False}]}}}, EC2, True),
    ("exists-false-present", {"data": {"detail": {"c-count": [{"exists": False}]}}}, EC2, False),
    (
        "exists-false-object-not-leaf",
        {"data": {"detail": {"c-count": [{"exists": False}]}}},
        {"detail": {"c-count": {"c1": 100}}},
        True,
    ),
    ("exists-false-parent-missing", {"data": {"detail": {"c-count": [{"exists": False}]}}}, {"other": 1}, True),
    ("exists-false-empty-array", {"data": {"v": [{"exists": False}]}}, {"v": []}, True),
    ("exists-false-array", {"data": {"v": [{"exists": False}]}}, {"v": [1]}, False),
    ("exists-false-or-value", {"data": {"v": [{"exists": False}, "x"]}}, {"v": "x"}, True),
    ("exists-false-and-other-key", {"data": {"v": [{"exists": False}], "w": ["y"]}}, {"w": "y"}, True),
    # wildcard
    ("wildcard", {"data": {"source": [{"wildcard": "Simple*Service"}]}}, {"source": "SimpleQueueService"}, True),
    ("wildcard-zero-chars", {"data": {"source": [{"wildcard": "Simple*Service"}]}}, {"source": "SimpleService"}, True),
    ("wildcard-whole", {"data": {"source": [{"wildcard": "Simple*Service"}]}}, {"source": "SimpleServiceX"}, False),
    ("wildcard-path", {"data": {"p": [{"wildcard": "dir/*/file.*"}]}}, {"p": "dir/a/b/file.txt"}, True),
    ("wildcard-escaped-star", {"data": {"p": [{"wildcard": "a\\*b"}]}}, {"p": "a*b"}, True),
    ("wildcard-escaped-star-literal", {"data": {"p": [{"wildcard": "a\\*b"}]}}, {"p": "axxb"}, False),
    ("wildcard-escaped-backslash", {"data": {"p": [{"wildcard": "a\\\\*"}]}}, {"p": "a\\xyz"}, True),
    ("wildcard-regex-chars-literal", {"data": {"p": [{"wildcard": "a.c*"}]}}, {"p": "abc"}, False),
    ("wildcard-multiline", {"data": {"p": [{"wildcard": "a*z"}]}}, {"p": "a\nz"}, True),
    ("wildcard-not-number", {"data": {"p": [{"wildcard": "1*"}]}}, {"p": 12}, False),
    # cidr
    ("cidr-v4", {"data": {"detail": {"source-ip": [{"cidr": "10.0.0.0/24"}]}}}, EC2, True),
    ("cidr-v4-outside", {"data": {"ip": [{"cidr": "10.0.0.0/24"}]}}, {"ip": "10.0.1.1"}, False),
    ("cidr-v6", {"data": {"ip": [{"cidr": "2001:db8::/32"}]}}, {"ip": "2001:db8::ff00:42:8329"}, True),
    ("cidr-v6-outside", {"data": {"ip": [{"cidr": "2001:db8::/32"}]}}, {"ip": "2001:db9::1"}, False),
    ("cidr-v4-vs-v6", {"data": {"ip": [{"cidr": "10.0.0.0/8"}]}}, {"ip": "::1"}, False),
    ("cidr-not-an-ip", {"data": {"ip": [{"cidr": "10.0.0.0/8"}]}}, {"ip": "ten"}, False),
    ("cidr-number", {"data": {"ip": [{"cidr": "10.0.0.0/8"}]}}, {"ip": 123}, False),
    # $or
    (
        "or-first-branch",
        {
            "data": {
                "source": ["aws.cloudwatch"],
                "$or": [{"metricName": ["CPUUtilization"]}, {"namespace": ["AWS/EC2"]}],
            }
        },
        {"source": "aws.cloudwatch", "metricName": "CPUUtilization"},
        True,
    ),
    (
        "or-second-branch",
        {
            "data": {
                "source": ["aws.cloudwatch"],
                "$or": [{"metricName": ["CPUUtilization"]}, {"namespace": ["AWS/EC2"]}],
            }
        },
        {"source": "aws.cloudwatch", "namespace": "AWS/EC2"},
        True,
    ),
    (
        "or-no-branch",
        {
            "data": {
                "source": ["aws.cloudwatch"],
                "$or": [{"metricName": ["CPUUtilization"]}, {"namespace": ["AWS/EC2"]}],
            }
        },
        {"source": "aws.cloudwatch", "namespace": "AWS/ES"},
        False,
    ),
    (
        "or-and-still-applies",
        {
            "data": {
                "source": ["aws.cloudwatch"],
                "$or": [{"metricName": ["CPUUtilization"]}, {"namespace": ["AWS/EC2"]}],
            }
        },
        {"source": "aws.ec2", "metricName": "CPUUtilization"},
        False,
    ),
    (
        "or-nested-and",
        {"data": {"$or": [{"a": [1]}, {"b": [2], "c": [3], "$or": [{"d": [4]}, {"e": [5]}]}]}},
        {"b": 2, "c": 3, "e": 5},
        True,
    ),
    (
        "or-nested-and-miss",
        {"data": {"$or": [{"a": [1]}, {"b": [2], "c": [3], "$or": [{"d": [4]}, {"e": [5]}]}]}},
        {"b": 2, "c": 3},
        False,
    ),
    ("or-top-level-mixes-metadata", {"$or": [{"partitionKey": ["k9"]}, {"data": {"v": [1]}}]}, {"v": 1}, True),
    # metadata
    ("metadata-only", {"partitionKey": ["k1"]}, {"v": 1}, True),
    ("metadata-only-miss", {"partitionKey": ["k2"]}, {"v": 1}, False),
    ("metadata-and-data", {"partitionKey": ["k1"], "data": {"v": [1]}}, {"v": 1}, True),
    ("metadata-prefix", {"sequenceNumber": [{"prefix": "1"}]}, None, True),
    # records whose data is not JSON
    ("not-json-data-pattern", {"data": {"v": [1]}}, NOT_JSON, False),
    ("not-json-exists-false", {"data": {"v": [{"exists": False}]}}, NOT_JSON, False),
    ("not-json-anything-but", {"data": {"v": [{"anything-but": 1}]}}, NOT_JSON, False),
    ("not-json-metadata-only", {"partitionKey": ["k1"]}, NOT_JSON, True),
    ("not-json-or-with-data", {"$or": [{"partitionKey": ["k1"]}, {"data": {"v": [1]}}]}, NOT_JSON, False),
    # data that is JSON but not an object
    ("scalar-data", {"data": ["hello"]}, "hello", True),
    ("or-as-field-name", {"data": {"$or": {"a": [1]}}}, {"$or": {"a": 1}}, True),
    ("scalar-data-vs-object-pattern", {"data": {"v": [1]}}, "hello", False),
]


@pytest.mark.parametrize(("pattern", "data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pattern_against_event(pattern: dict[str, Any], data: Any, expected: bool) -> None:
    event = rec(data)
    assert FilterSet([pattern]).matches(event) is expected
    # The same pattern given as JSON text (how Lambda's FilterCriteria carries it) agrees.
    assert FilterSet([json.dumps(pattern)]).matches(event) is expected


def test_case_ids_are_unique_and_numerous() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 80


# --- several patterns -------------------------------------------------------------------------


def test_patterns_are_ored() -> None:
    filters = FilterSet([{"data": {"v": [1]}}, {"partitionKey": ["k2"]}])
    assert filters.matches(rec({"v": 1}))
    assert filters.matches(rec({"v": 2}, partitionKey="k2"))
    assert not filters.matches(rec({"v": 2}))


def test_not_json_skips_only_data_patterns() -> None:
    filters = FilterSet([{"data": {"v": [1]}}, {"partitionKey": ["k1"]}])
    assert filters.matches(rec(NOT_JSON))
    assert not filters.matches(rec(NOT_JSON, partitionKey="k2"))


def test_empty_filter_set_matches_everything() -> None:
    filters = FilterSet([])
    assert filters.matches(rec(NOT_JSON))
    assert filters.matches({})
    assert not filters.uses_data


def test_uses_data() -> None:
    assert FilterSet([{"partitionKey": ["k"]}, {"data": {"v": [1]}}]).uses_data
    assert not FilterSet([{"partitionKey": ["k"]}]).uses_data
    assert FilterSet([{"$or": [{"partitionKey": ["k"]}, {"data": {"v": [1]}}]}]).uses_data
    assert FilterSet([{"dynamodb": {"Keys": {"id": {"S": ["1"]}}}}], data_key="dynamodb").uses_data
    assert not FilterSet([{"dynamodb": {"Keys": {"id": {"S": ["1"]}}}}]).uses_data


def test_custom_data_key() -> None:
    filters = FilterSet([{"value": {"device": ["AB1234"]}}], data_key="value")
    assert filters.matches({"offset": 15, "value": {"device": "AB1234"}})
    assert not filters.matches({"offset": 15, "value": NOT_JSON})


def test_duplicate_keys_in_json_text_last_wins() -> None:
    filters = FilterSet(['{"data": {"v": ["a"], "v": ["b"]}}'])
    assert filters.matches(rec({"v": "b"}))
    assert not filters.matches(rec({"v": "a"}))


def test_pattern_count_limit() -> None:
    FilterSet([{"partitionKey": [str(i)]} for i in range(10)])
    with pytest.raises(ValueError, match="at most 10 filter patterns"):
        FilterSet([{"partitionKey": [str(i)]} for i in range(11)])
    with pytest.raises(ValueError, match="at most 2 filter patterns"):
        FilterSet([{"a": [1]}] * 3, max_patterns=2)


# --- invalid patterns -------------------------------------------------------------------------

INVALID: list[tuple[str, Any, str]] = [
    ("not-json", '{"data": ', r"not valid JSON"),
    ("not-object", "[1, 2]", r"must be a JSON object, got a list"),
    ("empty-pattern", {}, r"empty object"),
    ("empty-nested", {"data": {}}, r"at data: an empty object"),
    ("leaf-not-list", {"data": {"v": "x"}}, r"at data\.v: must be an object or a list .* got a string"),
    ("leaf-number", {"data": {"v": 5}}, r"at data\.v: .* got a number"),
    ("empty-list", {"data": {"v": []}}, r"at data\.v: an empty list matches nothing"),
    ("nested-list", {"data": {"v": [["a"]]}}, r"at data\.v: values to match .* got a list"),
    ("unknown-operator", {"data": {"v": [{"contains": "x"}]}}, r"at data\.v: unknown operator 'contains'"),
    ("two-operators", {"data": {"v": [{"prefix": "a", "suffix": "b"}]}}, r"exactly one key"),
    ("prefix-number", {"data": {"v": [{"prefix": 1}]}}, r"prefix: expected a string, got a number"),
    (
        "prefix-bad-nested",
        {"data": {"v": [{"prefix": {"anything-but": "x"}}]}},
        r"only nested operator allowed is equals-ignore-case",
    ),
    ("suffix-list", {"data": {"v": [{"suffix": [".png"]}]}}, r"suffix: expected a string, got a list"),
    ("ignore-case-list", {"data": {"v": [{"equals-ignore-case": ["a"]}]}}, r"equals-ignore-case: expected a string"),
    ("exists-string", {"data": {"v": [{"exists": "true"}]}}, r"exists: expected true or false"),
    ("numeric-not-list", {"data": {"v": [{"numeric": 5}]}}, r"numeric: expected a list"),
    ("numeric-empty", {"data": {"v": [{"numeric": []}]}}, r"numeric: expected a list"),
    ("numeric-bad-operator", {"data": {"v": [{"numeric": ["=>", 5]}]}}, r"numeric: unknown comparison '=>'"),
    ("numeric-string-operand", {"data": {"v": [{"numeric": [">", "5"]}]}}, r"value after '>' must be a number"),
    ("numeric-bool-operand", {"data": {"v": [{"numeric": ["=", True]}]}}, r"value after '=' must be a number"),
    ("numeric-odd-length", {"data": {"v": [{"numeric": [">", 1, "<"]}]}}, r"numeric: expected one operator"),
    ("numeric-too-long", {"data": {"v": [{"numeric": [">", 1, "<", 5, "<", 6]}]}}, r"numeric: expected one operator"),
    ("numeric-two-lower", {"data": {"v": [{"numeric": [">", 1, ">=", 5]}]}}, r"lower bound .* then an upper bound"),
    ("numeric-upper-first", {"data": {"v": [{"numeric": ["<", 10, ">", 5]}]}}, r"lower bound .* then an upper bound"),
    ("numeric-empty-range", {"data": {"v": [{"numeric": [">", 10, "<", 10]}]}}, r"lower bound 10 must be less than"),
    ("anything-but-empty-list", {"data": {"v": [{"anything-but": []}]}}, r"anything-but: the list is empty"),
    ("anything-but-mixed", {"data": {"v": [{"anything-but": ["a", 1]}]}}, r"only strings or only numbers"),
    ("anything-but-null", {"data": {"v": [{"anything-but": None}]}}, r"anything-but: expected a string"),
    (
        "anything-but-numeric",
        {"data": {"v": [{"anything-but": {"numeric": [">", 1]}}]}},
        r"unsupported nested operator 'numeric'",
    ),
    ("anything-but-prefix-empty", {"data": {"v": [{"anything-but": {"prefix": ""}}]}}, r"empty prefix is not allowed"),
    (
        "anything-but-prefix-int",
        {"data": {"v": [{"anything-but": {"prefix": 1}}]}},
        r"anything-but/prefix: expected a string",
    ),
    ("wildcard-double-star", {"data": {"v": [{"wildcard": "a**b"}]}}, r"wildcard: consecutive \* at position 2"),
    ("wildcard-bad-escape", {"data": {"v": [{"wildcard": "a\\b"}]}}, r"wildcard: invalid escape at position 1"),
    ("wildcard-trailing-backslash", {"data": {"v": [{"wildcard": "a\\"}]}}, r"wildcard: invalid escape"),
    ("wildcard-number", {"data": {"v": [{"wildcard": 1}]}}, r"wildcard: expected a string"),
    ("cidr-no-mask", {"data": {"v": [{"cidr": "10.0.0.1"}]}}, r"cidr: expected an address block"),
    ("cidr-bad-ip", {"data": {"v": [{"cidr": "10.0.0.256/24"}]}}, r"cidr: .*10\.0\.0\.256"),
    ("cidr-host-bits", {"data": {"v": [{"cidr": "10.0.0.1/24"}]}}, r"cidr: .*host bits set"),
    ("cidr-bad-mask", {"data": {"v": [{"cidr": "10.0.0.0/33"}]}}, r"cidr: "),
    ("or-one-branch-is-a-field", {"$or": [{"a": [1]}]}, r"at \$or: unknown operator 'a'"),
    ("or-not-objects-is-a-field", {"data": {"$or": [["a"], ["b"]]}}, r"at data\.\$or: values to match .* got a list"),
    ("error-inside-or", {"$or": [{"a": [1]}, {"b": [{"nope": 1}]}]}, r"at \$or\[1\]\.b: unknown operator 'nope'"),
    ("unsupported-type", {"data": {"v": [object()]}}, r"got object"),
]


@pytest.mark.parametrize(("pattern", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_pattern_names_the_problem(pattern: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FilterSet([pattern])


def test_error_names_which_pattern() -> None:
    with pytest.raises(ValueError, match=r"^pattern 1 at data\.v: unknown operator 'bogus'"):
        FilterSet([{"a": [1]}, {"data": {"v": [{"bogus": 1}]}}])


# --- properties -------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(st.text(min_size=1, max_size=6), json_values, min_size=1, max_size=5)


def _leaf_paths(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every (path, scalar) in a JSON object, array elements counted under their parent's path."""
    if isinstance(value, dict):
        return [leaf for key, child in value.items() for leaf in _leaf_paths(child, (*path, key))]
    if isinstance(value, list):
        return [leaf for child in value for leaf in _leaf_paths(child, path)]
    return [(path, value)]


def _nest(path: tuple[str, ...], leaf: Any) -> dict[str, Any]:
    pattern: Any = leaf
    for key in reversed(path):
        pattern = {key: pattern}
    return dict(pattern)


@given(objects, st.data())
def test_exact_match_on_an_events_own_leaf_matches_it(data: dict[str, Any], draw: st.DataObject) -> None:
    leaves = [(p, v) for p, v in _leaf_paths(data) if p]
    if not leaves:
        return
    path, value = draw.draw(st.sampled_from(leaves))
    pattern = _nest(("data", *path), [value])
    assert FilterSet([pattern]).matches(rec(data))
    assert FilterSet([_nest(("data", *path), [{"exists": True}])]).matches(rec(data))


@given(scalars, scalars)
def test_anything_but_never_matches_its_own_value(excluded: Any, value: Any) -> None:
    if excluded is None or isinstance(excluded, bool):
        return  # anything-but takes strings and numbers only
    filters = FilterSet([{"data": {"v": [{"anything-but": excluded}]}}])
    assert not filters.matches(rec({"v": excluded}))
    # ... and an exact match on the same value is its exact complement for any present value.
    exact = FilterSet([{"data": {"v": [excluded]}}])
    assert filters.matches(rec({"v": value})) is not exact.matches(rec({"v": value}))


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9), st.floats(-1e9, 1e9))
def test_numeric_range_agrees_with_comparison(value: float, bound: float) -> None:
    filters = FilterSet([{"data": {"v": [{"numeric": [">=", bound]}]}}])
    assert filters.matches(rec({"v": value})) is (value >= bound)
