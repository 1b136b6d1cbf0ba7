"""The fast LALR loop returns exactly what Lark returns, and gives way to Lark wherever Lark raises."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark import UnexpectedInput

from benchmarks.programs import generate_program
from dspex.lang import parse as parse_module
from dspex.lang.lalr_driver import FAILED, LalrDriver

ROOT = Path(__file__).parents[2]
SOURCES = sorted(ROOT.glob("examples/**/*.dspex"))


def both(text: str) -> tuple[Any, Any]:
    lark = parse_module._get_parser()
    driver = LalrDriver.build(lark)
    assert driver is not None, "the driver no longer understands this Lark: check lalr_driver against Lark's internals"
    parse_module._state.errors = []
    fast = driver.parse(text)
    parse_module._state.errors = []
    try:
        slow = lark.parse(text)
    except UnexpectedInput:
        slow = FAILED
    return fast, slow


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_same_tree_as_lark_on_every_example(path: Path) -> None:
    fast, slow = both(path.read_text(encoding="utf-8"))
    assert fast == slow


def test_same_tree_on_a_large_generated_program() -> None:
    source, _ = generate_program(300, 30, seed=3)
    fast, slow = both(source)
    assert fast is not FAILED and fast == slow


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_agree_with_lark(data: st.DataObject) -> None:
    source = data.draw(st.sampled_from(SOURCES)).read_text(encoding="utf-8")
    at = data.draw(st.integers(0, len(source)))
    edit = data.draw(st.sampled_from(["", " ", "\n", "(", ")", "{", "}", "=", ",", '"', "#", "x", "1", "in ",
                                      "map ", "->", ".", "predict "]))
    cut = data.draw(st.integers(0, 3))
    mutated = source[:at] + edit + source[at + cut:]
    fast, slow = both(mutated)
    if slow is FAILED:
        assert fast is FAILED
    else:
        assert fast == slow


def test_build_declines_a_parser_it_does_not_understand() -> None:
    class NotLark:
        parser = None

    assert LalrDriver.build(NotLark()) is None  # type: ignore[arg-type]
