"""Cache keys: a canonical msgpack encoding of a step call, hashed to a fixed-size key (the Python twin).

Canonical means equal values give equal bytes whatever the dict order: every map's keys are sorted (by code
point when all are strings, the usual case, else by their own canonical bytes), tuples encode as lists, an
``Enum`` member as its value and a subclass of a base type (``bool int float str bytes``) as that base; and
``1``, ``1.0``, ``"1"``, ``b"1"`` and ``True`` stay distinct (msgpack types them). Ints beyond 64 bits are
ext type 1 holding their decimal text. The hash is XXH3-128: a cache key must be fast and collision-free on
honest inputs, not a cryptographic commitment (the cache is the user's own file), and the keyed bytes never
include credentials because the caller passes the lm's identity (model and endpoint), never its key.
"""
from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

import msgpack
import xxhash

__all__ = ["KEY_VERSION", "KEY_SIZE", "canonical", "key_material", "cache_key"]

KEY_VERSION = 2  # bump when the key bytes change, so that old entries are never read with a new meaning
KEY_SIZE = 16  # bytes of a key: XXH3-128, canonical (big-endian) form
_BIGINT = 1  # msgpack ext type for ints beyond 64 bits, as decimal text
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_BASES: tuple[type, ...] = (bool, int, float, str, bytes)


def _canon(value: Any) -> Any:
    """``value`` as plain msgpack data with every map's keys in canonical order."""
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None or kind is bytes:
        return value
    if kind is int:
        return value if _INT_MIN <= value <= _INT_MAX else msgpack.ExtType(_BIGINT, str(value).encode())
    if kind is dict or isinstance(value, Mapping):
        if not value:
            return {}
        if all(type(k) is str for k in value):  # the usual case: code-point order is canonical
            return {k: _canon(value[k]) for k in sorted(value)}
        pairs = sorted(((_canon_key(k), v) for k, v in value.items()), key=lambda kv: _pack(kv[0]))
        return {k: _canon(v) for k, v in pairs}
    if kind is list or isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, Enum):  # a member hashes as its value, like the literal it stands for
        return _canon(value.value)
    for base in _BASES:  # other subclasses (numpy floats, ...) hash as their base
        if isinstance(value, base):
            return _canon(base(value))
    raise TypeError(f"cache key: cannot encode a value of type {kind.__name__}")


def _canon_key(key: Any) -> Any:
    return tuple(_canon_key(k) for k in key) if isinstance(key, tuple) else _canon(key)


def _pack(data: Any) -> bytes:
    return msgpack.packb(data, use_bin_type=True)


def canonical(value: Any) -> bytes:
    """The canonical msgpack bytes of one value; raises TypeError for a value msgpack cannot hold."""
    return _pack(_canon(value))


def key_material(node_fingerprint: str, inputs: Mapping[str, Any], lm_identity: str, options: Mapping[str, Any],
                 var_values: Mapping[str, Any]) -> bytes:
    """The exact bytes ``cache_key`` hashes: ``[KEY_VERSION, fingerprint, inputs, lm, options, vars]``."""
    return _pack([KEY_VERSION, node_fingerprint, _canon(inputs), lm_identity, _canon(options), _canon(var_values)])


def cache_key(node_fingerprint: str, inputs: Mapping[str, Any], lm_identity: str, options: Mapping[str, Any],
              var_values: Mapping[str, Any]) -> bytes:
    """A ``KEY_SIZE``-byte key for one step call. Pass the lm's identity (model and endpoint), never its key."""
    return xxhash.xxh3_128_digest(key_material(node_fingerprint, inputs, lm_identity, options, var_values))
