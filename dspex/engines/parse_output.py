"""Find the output fields in an LM's answer text, leniently.

Schema-constrained backends answer with bare JSON (the fast path); others wrap it in prose or code
fences, use DSPy's ``[[ ## field ## ]]`` sections, or ``field: value`` lines. Values found outside JSON
stay strings: the validator coerces them to the field types.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Sequence

from dspex.engines.base import ValidationError
from dspex.ir.program import Field
from dspex.ir.types import STR

__all__ = ["parse_output", "OUTPUT_PATH"]

OUTPUT_PATH = "<output>"
_DECODER = json.JSONDecoder()
_FENCE = re.compile(r"```[\w-]*[ \t]*\n?(.*?)```", re.S)
_SECTION = re.compile(r"\[\[\s*##\s*(\w+)\s*##\s*\]\]")
_MAX_SHOWN = 200


def parse_output(text: str, fields: Sequence[Field]) -> dict[str, Any]:
    """The answer's values by output name; raises ``ValidationError`` at ``<output>`` when none is found."""
    s = text.strip()
    if s.startswith("{"):
        try:
            found = json.loads(s)
        except ValueError:
            pass
        else:
            if isinstance(found, dict):
                return found
    names = [f.name for f in fields]
    objects = _json_objects(s)
    for obj in objects:
        if any(name in obj for name in names):
            return obj
    if len(fields) == 1 and not objects:
        bare = _bare_json(s)
        if bare is not None and (fields[0].type != STR or isinstance(bare[0], str)):
            return {names[0]: bare[0]}
    found = _sections(s, names) or _lines(s, names)
    if found:
        return found
    if objects:
        return objects[0]  # JSON without any expected key: the validator names what is missing
    if len(fields) == 1 and fields[0].type == STR and s:
        return {names[0]: s}
    shown = s if len(s) <= _MAX_SHOWN else s[:_MAX_SHOWN] + "..."
    wanted = ", ".join(f"`{n}`" for n in names)
    raise ValidationError(OUTPUT_PATH, shown, f"could not find the output fields {wanted} in the answer")


def _json_objects(s: str) -> list[dict[str, Any]]:
    """Every JSON object in the text, fenced ones first, each from the first ``{`` that starts a valid one."""
    objects = []
    for chunk in [m.group(1) for m in _FENCE.finditer(s)] + [s]:
        start = chunk.find("{")
        while start != -1:
            try:
                obj, end = _DECODER.raw_decode(chunk, start)
            except ValueError:
                start = chunk.find("{", start + 1)
                continue
            if isinstance(obj, dict):
                objects.append(obj)
            start = chunk.find("{", end)
    return objects


def _bare_json(s: str) -> tuple[Any] | None:
    """A whole answer that is one JSON scalar or list (``42``, ``"positive"``, ``[1, 2]``), boxed."""
    for chunk in [m.group(1).strip() for m in _FENCE.finditer(s)] or [s]:
        try:
            return (json.loads(chunk),)
        except ValueError:
            continue
    return None


def _sections(s: str, names: list[str]) -> dict[str, Any]:
    """DSPy's chat format: ``[[ ## name ## ]]`` then the value, up to the next marker."""
    parts = _SECTION.split(s)  # text, name, value, name, value, ...
    return {name: _scalar(value) for name, value in zip(parts[1::2], parts[2::2]) if name in names}


def _lines(s: str, names: list[str]) -> dict[str, Any]:
    """``name: value`` lines (markdown emphasis and quotes around the name allowed); a value runs on to
    the next such line, so multi-line reasoning survives."""
    canonical = {n.lower(): n for n in names}
    heads = list(_line_head(tuple(names)).finditer(s))
    found: dict[str, Any] = {}
    for m, nxt in zip(heads, heads[1:] + [None]):
        name = canonical[m.group(1).lower()]
        if name not in found:
            found[name] = _scalar(s[m.end():nxt.start() if nxt else len(s)])
    return found


@lru_cache(maxsize=256)
def _line_head(names: tuple[str, ...]) -> re.Pattern[str]:
    alternation = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"^[ \t>*_`\"'-]*({alternation})[*_`\"']*[ \t]*[:=][*_]*[ \t]*", re.M | re.I)


def _scalar(raw: str) -> Any:
    """A value's text, with a JSON string's quotes and escapes undone."""
    value = raw.strip().rstrip(",").strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value
