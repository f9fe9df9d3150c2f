"""Every `tests/fixtures/emails/NAME.eml` with a `NAME.expected.json` beside it parses to what that file says.

The expected file is a subset of `parse --json`: only the keys it names are compared (recursively for
objects; lists compare whole). An optional `"_options"` object overrides `ParseOptions` fields
(`zone`, `mailbox_address`, `ticket_prefix`, `reserved_names`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from subdomaind.parsers import ParseOptions, parse

FIXTURES = Path(__file__).parent / "fixtures" / "emails"
DEFAULT_OPTIONS = {"zone": "trenggalekkab.go.id", "mailbox_address": "layanan@trenggalekkab.go.id"}


def _cases() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("*.eml") if p.with_suffix(".expected.json").exists())


def options_for(expected: dict[str, Any]) -> ParseOptions:
    raw = {**DEFAULT_OPTIONS, **expected.get("_options", {})}
    if "reserved_names" in raw:
        raw["reserved_names"] = frozenset(raw["reserved_names"])
    return ParseOptions(**raw)


def assert_subset(expected: Any, actual: Any, path: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if key == "_options":
                continue
            assert key in actual, f"{path}.{key}: missing from {sorted(actual)}"
            assert_subset(value, actual[key], f"{path}.{key}")
    else:
        assert expected == actual, f"{path}: expected {expected!r}, got {actual!r}"


@pytest.mark.parametrize("eml", _cases(), ids=lambda p: p.stem)
def test_fixture_parses_as_expected(eml: Path) -> None:
    expected = json.loads(eml.with_suffix(".expected.json").read_text(encoding="utf-8"))
    result = parse(eml.read_bytes(), options_for(expected)).to_json()
    json.dumps(result)  # the contract is JSON: everything in it must serialise
    assert_subset(expected, result)
