"""The ``impl`` fixture of every hot-path test: each test runs on the compiled twin (id ``c``) and the Python
twin (id ``py``). A compiled twin that was not built fails its tests (a normal install must build it), except
in a run with ``DSPEX_NO_EXTENSIONS=1``, which checks the Python twins only.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import pytest

from dspex.native import NO_EXTENSIONS, twin

__all__ = ["twin_fixture", "both_twins"]


def both_twins(concern: str) -> tuple[ModuleType, ModuleType]:
    """``(c, py)`` for cross-twin tests; skips the test in a ``DSPEX_NO_EXTENSIONS=1`` run."""
    if NO_EXTENSIONS:
        pytest.skip("DSPEX_NO_EXTENSIONS=1: this run checks the Python twins only")
    return twin(concern, "c"), twin(concern, "py")


def twin_fixture(concern: str) -> Callable[..., Any]:
    """A session-scoped ``impl`` fixture over the twins of ``concern`` (``validate``, ``cachekey``, ``wire``)."""

    @pytest.fixture(scope="session", params=["c", "py"])
    def impl(request: pytest.FixtureRequest) -> ModuleType:
        if request.param == "c" and NO_EXTENSIONS:
            pytest.skip("DSPEX_NO_EXTENSIONS=1: this run checks the Python twins only")
        return twin(concern, request.param)

    return impl
