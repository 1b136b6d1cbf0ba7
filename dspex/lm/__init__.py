"""LM adapters, one module per provider behind ``dspex.lm.base.LM``: ``dspex.lm.OpenAI(...)`` and friends.

Imported lazily, so using one provider never imports another's client library.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "LM": ("dspex.lm.base", "LM"), "LMRequest": ("dspex.lm.base", "LMRequest"),
    "LMResponse": ("dspex.lm.base", "LMResponse"), "Message": ("dspex.lm.base", "Message"),
    "LMError": ("dspex.lm.base", "LMError"),
    "OpenAI": ("dspex.lm.openai", "OpenAILM"), "Local": ("dspex.lm.local", "LocalLM"),
    "Instructor": ("dspex.lm.instructor_lm", "InstructorLM"), "Dspy": ("dspex.lm.dspy_lm", "DspyLM"),
    "Scripted": ("dspex.lm.scripted", "ScriptedLM"),
    "Fallback": ("dspex.lm.combinators", "FallbackLM"), "RoundRobin": ("dspex.lm.combinators", "RoundRobinLM"),
    "from_spec": ("dspex.lm.spec", "lm_from_spec"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dspex.lm' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(import_module(module), attr)
