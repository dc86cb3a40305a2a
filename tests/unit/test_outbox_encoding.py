"""The CLI's hand-written Payloads encoder gives the same bytes as temporalio's default converter, so a
submit from the CLI and one from the API of the same input are the same start (same fingerprint)."""

from __future__ import annotations

from typing import Any

import pytest

from stigmer_trio._boundary._temporal import encode_input
from stigmer_trio._core._outbox import encode_json_input

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    2**62,
    1.5,
    "",
    'héllo \u2603 "quoted"',
    "x" * 300,  # a length that needs a two-byte varint
    [],
    [1, "a", None, {"b": 2}],
    {},
    {"z": 1, "a": [True, None], "m": {"y": "é", "b": 0.25}},
    {"big": "y" * 20000},  # three-byte varints
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_one_value_encodes_like_the_sdk(value: Any) -> None:
    assert encode_json_input([value]) == encode_input([value])


def test_several_values_and_none_encode_like_the_sdk() -> None:
    assert encode_json_input(VALUES) == encode_input(VALUES)
    assert encode_json_input([]) == encode_input([]) == b""
