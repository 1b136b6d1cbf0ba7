"""Shared set-up of the benchmarks: run them with ``python -m pytest benchmarks -q`` from the repository root.

Every benchmark states its side in ``benchmark.extra_info["side"]`` (``"dspex"``, ``"competitor"`` or
``"baseline"``) and how many items one round handles (``extra_info["items"]``, named by ``extra_info["unit"]``).
At the end of the run this prints, for each group, the time per item of each benchmark and the ratio of each
dspex benchmark to the competitor (per item, min and median over rounds), checked against the dspex
benchmark's ``target`` when it has one, right below pytest-benchmark's own table. A group may hold several
dspex benchmarks (``extra_info["variant"]`` says what each measures) and baselines (a floor no client can
beat, such as a bare HTTP round trip), which are shown for reference. Lines in ``extra_info["summary"]``
(figures that are not times: calls/s, share of valid outputs, accuracy) are printed under their benchmark.

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


def _per_item(bench: Any, stat: str) -> float:
    return float(bench[stat]) / (bench["extra_info"].get("items") or 1)


def _line(bench: Any) -> list[str]:
    info = bench["extra_info"]
    items, unit = info.get("items") or 1, info.get("unit", "item")
    variant = f"  [{info['variant']}]" if info.get("variant") else ""
    per = f"{_seconds(bench['min'] / items)} per {unit} (min, {items} {unit}{'s' if items != 1 else ''})"
    times = f"min {_seconds(bench['min'])}, median {_seconds(bench['median'])}"
    lines = [f"  {bench['name']:<36} {times}  = {per}{variant}"]
    lines += [f"      {text}" for text in info.get("summary") or ()]
    return lines


def _ratio(ours: Any, theirs: Any, label: str, target: float | None) -> str:
    ratio_min = _per_item(ours, "min") / _per_item(theirs, "min")
    ratio_median = _per_item(ours, "median") / _per_item(theirs, "median")
    verdict = ""
    if target is not None:
        verdict = (f"  (target <= {target:g}: {'met' if ratio_median <= target else 'NOT met'} on the median, "
                   f"{'met' if ratio_min <= target else 'NOT met'} on the min)")
    return f"  ratio {ours['name']} / {label}: {ratio_median:.3f} (median), {ratio_min:.3f} (min){verdict}"


def summarize(benchmarks: list[Any]) -> list[str]:
    """One block per group: each benchmark's time per item, then each dspex benchmark's ratio to the competitor
    (per item, checked against its ``target``) and to any baseline (for reference)."""
    groups: dict[str, dict[str, list[Any]]] = {}
    for bench in benchmarks:
        side = bench["extra_info"].get("side")
        if bench.get("path") is not None or getattr(bench, "has_error", False):
            continue  # a stored run shown by --benchmark-compare, or a benchmark that failed
        if side in ("dspex", "competitor", "baseline"):
            groups.setdefault(bench["group"] or "(no group)", {}).setdefault(side, []).append(bench)
    lines: list[str] = []
    for group, sides in sorted(groups.items()):
        ours, theirs, floors = sides.get("dspex", []), sides.get("competitor", []), sides.get("baseline", [])
        rival = ", ".join(b["extra_info"].get("competitor", b["name"]) for b in theirs) or "no competitor"
        lines.append(f"[{group}] {', '.join(b['name'] for b in ours) or 'no dspex benchmark'} vs {rival}")
        for bench in ours + theirs + floors:
            lines.extend(_line(bench))
        for mine in ours:
            for other in theirs:
                lines.append(_ratio(mine, other, other["extra_info"].get("competitor", other["name"]),
                                    mine["extra_info"].get("target")))
            for floor in floors:
                lines.append(_ratio(mine, floor, f"{floor['name']} (baseline)", None))
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
