"""Shared set-up of the benchmarks: run them with ``python -m pytest benchmarks -q`` from the repository root.

Every benchmark states its side in ``benchmark.extra_info["side"]`` (``"dspex"`` or ``"competitor"``) and how
many items one round handles (``extra_info["items"]``, named by ``extra_info["unit"]``). At the end of the run
this prints, for each group, the time per item of each side and the ratio dspex / competitor (min and
median over rounds), right below pytest-benchmark's own table.

Coverage tracing (``--cov`` in the project's ``addopts``) would slow both sides unevenly, so it is paused
while a benchmark runs.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["RATIO_KEY"]

RATIO_KEY = pytest.StashKey[list[str]]()
"""Where the summary lines wait between pytest-benchmark's grouping and the terminal summary."""


@pytest.fixture(autouse=True)
def _untraced() -> Iterator[None]:
    """Pause coverage (if it runs) around each benchmark: a tracer is no part of either side's cost."""
    try:
        from coverage import Coverage
    except ImportError:
        yield
        return
    cov = Coverage.current()
    if cov is None:
        yield
        return
    cov.stop()
    try:
        yield
    finally:
        cov.start()


def _seconds(value: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def summarize(benchmarks: list[Any]) -> list[str]:
    """One block per group that has both sides: times per item and the ratio dspex / competitor."""
    groups: dict[str, dict[str, Any]] = {}
    for bench in benchmarks:
        side = bench["extra_info"].get("side")
        if side in ("dspex", "competitor") and not getattr(bench, "has_error", False):
            groups.setdefault(bench["group"] or "(no group)", {})[side] = bench
    lines: list[str] = []
    for group, sides in sorted(groups.items()):
        if len(sides) != 2:
            continue
        ours, theirs = sides["dspex"], sides["competitor"]
        lines.append(f"[{group}] {ours['name']} vs {theirs['name']} ({theirs['extra_info'].get('competitor', '?')})")
        for bench in (ours, theirs):
            items = bench["extra_info"].get("items") or 1
            unit = bench["extra_info"].get("unit", "item")
            lines.append(f"  {bench['name']:<28} min {_seconds(bench['min'])}, median {_seconds(bench['median'])}"
                         f"  = {_seconds(bench['min'] / items)} per {unit} (min, {items} {unit}s)")
        ratio_min = ours["min"] / theirs["min"]
        ratio_median = ours["median"] / theirs["median"]
        target = ours["extra_info"].get("target")
        verdict = "" if target is None else (f"  (target <= {target}: "
                                             f"{'met' if ratio_median <= target else 'NOT met'})")
        lines.append(f"  ratio dspex / {theirs['extra_info'].get('competitor', 'competitor')}: "
                     f"{ratio_median:.3f} (median), {ratio_min:.3f} (min){verdict}")
    return lines


@pytest.hookimpl(hookwrapper=True)
def pytest_benchmark_group_stats(config: pytest.Config, benchmarks: list[Any], group_by: str) -> Iterator[None]:
    yield
    config.stash[RATIO_KEY] = summarize(benchmarks)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(RATIO_KEY, [])
    if lines:
        terminalreporter.write_sep("-", "dspex vs competitors")
        for line in lines:
            terminalreporter.write_line(line)
