"""Suite-wide isolation: every test gets its own ``DSPEX_HOME``, so the cache, telemetry, sessions and what the
adaptive scheduler learns never leak from one test into another (or into the user's ``~/.dspex``)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_dspex_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path_factory.mktemp("dspex-home")))
