"""LMs from their names: SPEC §6 spec strings (``--lm``, ``DSPEX_LM``, ``Runtime(lm=...)``) and ``.dspex`` lm
declarations (SPEC §3.5). Adapters are imported only when named, so the heavy ones (llama.cpp, dspy,
instructor) cost nothing unless used.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from dspex.ir.program import LMDecl
from dspex.lm.base import LM

__all__ = ["lm_from_spec", "lm_from_decl", "lms_from_decls", "build_lm", "SPEC_FORMS"]

SPEC_FORMS = ("local:smollm2", "local:/path/model.gguf", "openai:MODEL@BASE_URL", "instructor:MODEL@BASE_URL",
              "dspy:PROVIDER/MODEL")
_MODEL_AT_URL = re.compile(r"(?P<model>\S+?)(?:@(?P<url>https?://\S+))?")  # the model may hold an "@" too


def lm_from_spec(spec: str) -> LM:
    """The LM a spec string names; ``openai:MODEL`` without ``@BASE_URL`` is OpenAI itself."""
    provider, _, rest = spec.strip().partition(":")
    if provider == "local" and rest:
        from dspex.lm.local import LocalLM

        if rest.endswith(".gguf") or "/" in rest or "\\" in rest:
            return LocalLM(model=None, path=rest)
        return LocalLM(model=rest)
    if provider in ("openai", "instructor") and (m := _MODEL_AT_URL.fullmatch(rest)) and "://" not in m["model"]:
        args = {"model": m["model"]} | ({"base_url": m["url"]} if m["url"] else {})
        return build_lm(provider, args)
    if provider == "dspy" and re.fullmatch(r"[^/\s]+/\S+", rest):
        from dspex.lm.dspy_lm import DspyLM

        return DspyLM(rest)
    raise ValueError(f"bad lm spec {spec!r}; expected one of: {', '.join(SPEC_FORMS)}")


Wrap = Callable[[LM, str], LM]  # a leaf lm and its declared name -> the lm to use (e.g. with resilience)


def _as_is(lm: LM, name: str) -> LM:
    return lm


def lm_from_decl(decl: LMDecl, lms: Mapping[str, LMDecl], wrap: Wrap = _as_is) -> LM:
    """The LM an ``lm`` declaration describes; combinators take their members from ``lms`` (by name).
    ``wrap`` is applied to every leaf (never to a combinator), so each endpoint keeps its own guards."""
    return _from_decl(decl, lms, {}, (), wrap)


def lms_from_decls(lms: Mapping[str, LMDecl], wrap: Wrap = _as_is) -> dict[str, LM]:
    """Every declared LM, built once each: combinators share their members' instances (and pools)."""
    built: dict[str, LM] = {}
    for decl in lms.values():
        _from_decl(decl, lms, built, (), wrap)
    return built


def _from_decl(decl: LMDecl, lms: Mapping[str, LMDecl], built: dict[str, LM], path: tuple[str, ...],
               wrap: Wrap) -> LM:
    if decl.name in built:
        return built[decl.name]
    if decl.name in path:
        raise ValueError(f"lm {decl.name!r} includes itself: {' -> '.join((*path, decl.name))}")
    if decl.provider in ("fallback", "round_robin"):
        from dspex.lm.combinators import FallbackLM, RoundRobinLM

        members = []
        for name in decl.members:
            if name not in lms:
                raise ValueError(f"lm {decl.name!r} names an undeclared lm {name!r}")
            members.append(_from_decl(lms[name], lms, built, (*path, decl.name), wrap))
        lm: LM = (FallbackLM if decl.provider == "fallback" else RoundRobinLM)(members)
    else:
        try:
            lm = build_lm(decl.provider, dict(decl.args))
        except TypeError as e:  # an argument the adapter does not take
            raise ValueError(f"lm {decl.name!r}: {e}") from None
        lm = wrap(lm, decl.name)
    built[decl.name] = lm
    return lm


def build_lm(provider: str, args: dict[str, Any]) -> LM:
    """The adapter of ``provider`` built with ``args`` (an lm declaration's or a worker spec's)."""
    if provider == "local":
        from dspex.lm.local import LocalLM

        return LocalLM(**args)
    if provider == "openai":
        from dspex.lm.openai import OpenAILM

        return OpenAILM(**args)
    if provider == "instructor":
        from dspex.lm.instructor_lm import InstructorLM

        return InstructorLM(**args)
    if provider == "dspy":
        from dspex.lm.dspy_lm import DspyLM

        return DspyLM(**args)
    raise ValueError(f"unknown lm provider {provider!r}")
