"""Fixtures shared by the adapter tests."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.servers.openai_stub import OpenAIStub


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    """A fresh OpenAI-compatible server on 127.0.0.1 that echoes the last message."""
    with OpenAIStub() as s:
        yield s
