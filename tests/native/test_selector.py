"""``dspex.native`` picks the compiled twins in a normal install and the Python twins under
``DSPEX_NO_EXTENSIONS=1``; an extension that silently failed to build fails here."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import dspex.native as native
from dspex.native import CONCERNS, IMPLEMENTATION, NO_EXTENSIONS, twin


def _selection(no_extensions: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "DSPEX_NO_EXTENSIONS"}
    if no_extensions is not None:
        env["DSPEX_NO_EXTENSIONS"] = no_extensions
    code = ("import json, dspex.native as n; "
            "print(json.dumps({'no': n.NO_EXTENSIONS, 'impl': n.IMPLEMENTATION, 'ring': n.Ring.__module__}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(NO_EXTENSIONS, reason="DSPEX_NO_EXTENSIONS=1: this run checks the Python twins only")
def test_the_normal_install_loads_every_compiled_twin() -> None:
    for concern in CONCERNS:
        module = twin(concern, "c")  # ImportError here means the build silently fell back
        assert module.__file__ is not None and not module.__file__.endswith(".py"), module.__file__
    assert IMPLEMENTATION == {concern: "c" for concern in CONCERNS}
    assert native.compile_validator is twin("validate", "c").compile_validator
    assert native.cache_key is twin("cachekey", "c").cache_key
    assert native.Ring is twin("wire", "c").Ring


def test_no_extensions_selects_every_python_twin() -> None:
    selection = _selection("1")
    assert selection == {"no": True, "impl": {c: "py" for c in CONCERNS}, "ring": "dspex.native.wire_py"}


@pytest.mark.skipif(NO_EXTENSIONS, reason="DSPEX_NO_EXTENSIONS=1: this run checks the Python twins only")
@pytest.mark.parametrize("value", [None, ""])
def test_an_unset_or_empty_variable_keeps_the_compiled_twins(value: str | None) -> None:
    assert _selection(value)["impl"] == {c: "c" for c in CONCERNS}


def test_the_twins_export_one_api() -> None:
    for concern in CONCERNS:
        py = twin(concern, "py")
        names = set(py.__all__)
        assert names <= set(dir(native)) | {"FRAME_MAGIC"}, f"{concern}: the selector misses {names - set(dir(native))}"
        if not NO_EXTENSIONS:
            assert set(twin(concern, "c").__all__) == names, concern
