"""A small chat request, as the adapter tests send it."""
from __future__ import annotations

from dspex.lm.base import LMRequest, Message


def ask(text: str = "hello there", **options: object) -> LMRequest:
    return LMRequest((Message("system", "be brief"), Message("user", text)), **options)  # type: ignore[arg-type]
