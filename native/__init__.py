"""The hot path: validation, cache keys and wire framing, compiled (Cython) with pure-Python twins.

Each concern has two modules with one API and one set of messages: ``<name>_c`` (compiled from
``<name>_c.pyx`` at install) and ``<name>_py`` (the readable reference). This module picks the compiled
twin when it was built, and the Python twin when it was not or when ``DSPEX_NO_EXTENSIONS=1`` is set;
``IMPLEMENTATION`` says which one each concern got. Import the hot path from here, never a twin directly.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["NO_EXTENSIONS", "IMPLEMENTATION", "twin",
           "Validator", "compile_validator",
           "KEY_VERSION", "KEY_SIZE", "canonical", "key_material", "cache_key",
           "FRAME_VERSION", "FRAME_HEADER_SIZE", "MAX_FRAME_SIZE", "pack_frame", "unpack_frame", "Ring"]

NO_EXTENSIONS: bool = bool(os.environ.get("DSPEX_NO_EXTENSIONS"))
"""True when ``DSPEX_NO_EXTENSIONS`` is set (any non-empty value): the Python twins are used throughout."""

CONCERNS = ("validate", "cachekey", "wire")


def twin(concern: str, kind: str) -> ModuleType:
    """The ``kind`` ("c" or "py") twin of ``concern``; raises ImportError when the compiled one was not built."""
    return importlib.import_module(f"{__name__}.{concern}_{kind}")


def _select(concern: str) -> tuple[ModuleType, str]:
    if not NO_EXTENSIONS:
        try:
            return twin(concern, "c"), "c"
        except ImportError:  # not built on this machine (no compiler at install): the twin behaves the same
            pass
    return twin(concern, "py"), "py"


_validate, _validate_kind = _select("validate")
_cachekey, _cachekey_kind = _select("cachekey")
_wire, _wire_kind = _select("wire")

IMPLEMENTATION: dict[str, str] = {"validate": _validate_kind, "cachekey": _cachekey_kind, "wire": _wire_kind}
"""Which twin each concern runs on: ``"c"`` or ``"py"``."""

if TYPE_CHECKING:  # the Python twins are the type source; the compiled twins have the same API
    from dspex.native.cachekey_py import KEY_SIZE, KEY_VERSION, cache_key, canonical, key_material
    from dspex.native.validate_py import Validator, compile_validator
    from dspex.native.wire_py import (FRAME_HEADER_SIZE, FRAME_VERSION, MAX_FRAME_SIZE, Ring, pack_frame,
                                      unpack_frame)
else:
    Validator, compile_validator = _validate.Validator, _validate.compile_validator
    KEY_VERSION, KEY_SIZE = _cachekey.KEY_VERSION, _cachekey.KEY_SIZE
    canonical, key_material, cache_key = _cachekey.canonical, _cachekey.key_material, _cachekey.cache_key
    FRAME_VERSION, FRAME_HEADER_SIZE, MAX_FRAME_SIZE = (_wire.FRAME_VERSION, _wire.FRAME_HEADER_SIZE,
                                                        _wire.MAX_FRAME_SIZE)
    pack_frame, unpack_frame, Ring = _wire.pack_frame, _wire.unpack_frame, _wire.Ring
