"""Runtime configuration (SPEC §8): ``dspex.toml``, ``[tool.dspex]`` in ``pyproject.toml`` or a mapping, then env.

Every key is checked: a misspelt key or a value of the wrong type fails at load time with a ``ConfigError``
naming the key and the file, rather than being silently ignored. Environment variables override files:
``DSPEX_LM``, ``DSPEX_HOME`` (default ``~/.dspex``) and ``DSPEX_NO_EXTENSIONS``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import tomllib

from dspex.errors import DSPexError
from dspex.lang.diagnostics import did_you_mean

if TYPE_CHECKING:
    from dspex.runtime.resilience import ResiliencePolicy

__all__ = ["Config", "PoolConfig", "RuntimeConfig", "CacheConfig", "TelemetryConfig", "SchedulerConfig",
           "ConfigError", "load_config", "ensure_home", "CONFIG_FILE", "SINKS"]

CONFIG_FILE = "dspex.toml"
_BACKENDS = ("local", "ray")
SINKS = ("ring", "jsonl", "otel", "prometheus")
_FALSE_ENV = ("", "0", "false", "no", "off")


class ConfigError(DSPexError):
    """A configuration file, mapping or environment variable is invalid; ``key`` and ``source`` say where."""

    code = "CONFIG"

    def __init__(self, source: str, key: str, message: str):
        self.source = source
        self.key = key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """One worker pool: how many processes, the memory each may use (a worker past it is recycled between
    requests), whether it gets the GPU, and after how many requests a worker is recycled (0: never)."""

    size: int
    memory_mb: int
    gpu: bool = False
    max_requests: int = 0


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """Where workers run (``local`` or ``ray`` at ``address``) and the default bound on concurrent steps."""

    backend: str = "local"
    address: str | None = None
    concurrency: int = 16


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The step cache: entries kept in memory, and whether the SQLite file under ``home`` is used."""

    memory_entries: int = 10000
    disk: bool = True


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Where telemetry events go (``SINKS``; ``otel`` and ``prometheus`` only when their libraries import)."""

    sinks: tuple[str, ...] = SINKS


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The adaptive scheduler: on or off, its random seed (fixed by default: the same measurements give the
    same choices), and routes pinned per step (``"pipeline.node"`` or ``"*"`` -> ``"engine/lm"``)."""

    adaptive: bool = True
    seed: int = 0
    pins: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _default_pools() -> Mapping[str, PoolConfig]:
    return MappingProxyType({
        "general": PoolConfig(size=4, memory_mb=512),
        "neural": PoolConfig(size=1, memory_mb=4096, gpu=False),
        "optimizer": PoolConfig(size=1, memory_mb=4096),
    })


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. ``lms`` maps a program's lm names to spec strings that replace them;
    ``source`` is the file it came from (None for defaults or a mapping)."""

    lm: str | None = None
    home: Path = field(default_factory=lambda: Path.home() / ".dspex")
    pools: Mapping[str, PoolConfig] = field(default_factory=_default_pools)
    runtime: RuntimeConfig = RuntimeConfig()
    cache: CacheConfig = CacheConfig()
    lms: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    telemetry: TelemetryConfig = TelemetryConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resilience: "ResiliencePolicy | None" = None  # defaults for every lm (None: the policy's own defaults)
    resilience_lms: Mapping[str, "ResiliencePolicy"] = field(default_factory=lambda: MappingProxyType({}))
    no_extensions: bool = False
    source: Path | None = None


class _Reader:
    """Checks one table of raw TOML data against the keys it may hold, naming ``source`` in every error."""

    def __init__(self, source: str, base: Path):
        self.source = source
        self.base = base  # relative paths in a file are relative to the file

    def table(self, data: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise ConfigError(self.source, path, f"expected a table, got {_kind(data)}")
        for key in data:
            if key not in allowed:
                hint = did_you_mean(str(key), allowed)
                where = f"{path}.{key}" if path else str(key)
                raise ConfigError(self.source, where, "unknown key" + (f" ({hint})" if hint else "")
                                  + f"; expected one of {', '.join(allowed)}")
        return data

    def value(self, table: Mapping[str, Any], path: str, key: str, kind: type, default: Any) -> Any:
        if key not in table:
            return default
        value = table[key]
        # bool is an int in Python; ``size = true`` is still a mistake.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(self.source, _join(path, key),
                              f"expected {kind.__name__}, got {_kind(value)} {value!r}")
        return value

    def count(self, table: Mapping[str, Any], path: str, key: str, default: int, minimum: int) -> int:
        value: int = self.value(table, path, key, int, default)
        if value < minimum:
            raise ConfigError(self.source, _join(path, key), f"must be at least {minimum}, got {value}")
        return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)


def _parse(data: Any, reader: _Reader) -> Config:
    top = reader.table(data, "", ("lm", "home", "pools", "runtime", "cache", "lms", "telemetry", "scheduler",
                                  "resilience"))
    defaults = Config()
    home = reader.value(top, "", "home", str, None)
    pools = dict(defaults.pools)
    for name, raw in reader.table(top.get("pools", {}), "pools", tuple(pools)).items():
        path = f"pools.{name}"
        spec = reader.table(raw, path, ("size", "memory_mb", "gpu", "max_requests"))
        base = pools[name]
        pools[name] = PoolConfig(size=reader.count(spec, path, "size", base.size, 1),
                                 memory_mb=reader.count(spec, path, "memory_mb", base.memory_mb, 1),
                                 gpu=reader.value(spec, path, "gpu", bool, base.gpu),
                                 max_requests=reader.count(spec, path, "max_requests", base.max_requests, 0))
    rt = reader.table(top.get("runtime", {}), "runtime", ("backend", "address", "concurrency"))
    backend = reader.value(rt, "runtime", "backend", str, defaults.runtime.backend)
    if backend not in _BACKENDS:
        hint = did_you_mean(backend, _BACKENDS)
        raise ConfigError(reader.source, "runtime.backend", f"unknown backend {backend!r}"
                          + (f" ({hint})" if hint else "") + "; expected 'local' or 'ray'")
    address = reader.value(rt, "runtime", "address", str, None)
    if address is not None and backend != "ray":
        raise ConfigError(reader.source, "runtime.address", "only applies to backend = \"ray\"")
    cache = reader.table(top.get("cache", {}), "cache", ("memory_entries", "disk"))
    lms = top.get("lms", {})
    if not isinstance(lms, Mapping):
        raise ConfigError(reader.source, "lms", f"expected a table of lm spec strings, got {_kind(lms)}")
    for name in lms:
        reader.value(lms, "lms", name, str, None)
    telemetry = reader.table(top.get("telemetry", {}), "telemetry", ("sinks",))
    sinks = reader.value(telemetry, "telemetry", "sinks", list, list(SINKS))
    for sink in sinks:
        if sink not in SINKS:
            hint = did_you_mean(str(sink), SINKS)
            raise ConfigError(reader.source, "telemetry.sinks", f"unknown sink {sink!r}" + (f" ({hint})" if hint else "")
                              + f"; expected some of {', '.join(SINKS)}")
    sched = reader.table(top.get("scheduler", {}), "scheduler", ("adaptive", "seed", "pins"))
    pins = reader.table(sched.get("pins", {}), "scheduler.pins", tuple(sched.get("pins", {})))
    for node, route in pins.items():
        if not isinstance(route, str) or route.count("/") != 1:
            raise ConfigError(reader.source, f"scheduler.pins.{node}", f"expected \"engine/lm\", got {route!r}")
    resilience, resilience_lms = _resilience(reader, top.get("resilience", {}))
    return Config(
        lm=reader.value(top, "", "lm", str, None),
        home=(reader.base / Path(home).expanduser()) if home is not None else defaults.home,
        pools=MappingProxyType(pools),
        runtime=RuntimeConfig(backend=backend, address=address,
                              concurrency=reader.count(rt, "runtime", "concurrency", defaults.runtime.concurrency, 1)),
        cache=CacheConfig(memory_entries=reader.count(cache, "cache", "memory_entries",
                                                      defaults.cache.memory_entries, 0),
                          disk=reader.value(cache, "cache", "disk", bool, defaults.cache.disk)),
        lms=MappingProxyType(dict(lms)),
        telemetry=TelemetryConfig(tuple(sinks)),
        scheduler=SchedulerConfig(adaptive=reader.value(sched, "scheduler", "adaptive", bool, True),
                                  seed=reader.value(sched, "scheduler", "seed", int, 0),
                                  pins=MappingProxyType(dict(pins))),
        resilience=resilience,
        resilience_lms=MappingProxyType(resilience_lms),
    )


def _resilience(reader: _Reader, data: Any) -> tuple["ResiliencePolicy | None", dict[str, "ResiliencePolicy"]]:
    """``[resilience]``: defaults for every lm, and ``[resilience.lms.NAME]`` overrides for one lm (by its
    declared name or its identity)."""
    from dspex.runtime.resilience import policy_from_mapping

    if not data:
        return None, {}
    if not isinstance(data, Mapping):
        raise ConfigError(reader.source, "resilience", f"expected a table, got {_kind(data)}")
    table = dict(data)
    per_lm = reader.table(table.pop("lms", {}), "resilience.lms", tuple(data.get("lms", {}) or ()))
    defaults = policy_from_mapping(table, source=reader.source, path="resilience")
    return defaults, {name: policy_from_mapping(raw, base=defaults, source=reader.source, path=f"resilience.lms.{name}")
                      for name, raw in per_lm.items()}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"invalid TOML: {exc}") from None


def _from_file(path: Path) -> Config:
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        tool = data.get("tool", {})
        section = tool.get("dspex", {}) if isinstance(tool, dict) else {}
        config = _parse(section, _Reader(f"{path} [tool.dspex]", path.parent))
    else:
        config = _parse(data, _Reader(str(path), path.parent))
    return replace(config, source=path)


def _apply_env(config: Config) -> Config:
    env = os.environ
    changes: dict[str, Any] = {"no_extensions": env.get("DSPEX_NO_EXTENSIONS", "").strip().lower() not in _FALSE_ENV}
    if env.get("DSPEX_LM"):
        changes["lm"] = env["DSPEX_LM"]
    if env.get("DSPEX_HOME"):
        changes["home"] = Path(env["DSPEX_HOME"]).expanduser()
    return replace(config, **changes)


def load_config(config: str | Path | Mapping[str, Any] | Config | None = None, cwd: Path | None = None) -> Config:
    """The configuration from ``config`` (a file, a mapping shaped like ``dspex.toml``, or a ready ``Config``,
    returned as is), else ``dspex.toml`` in ``cwd``, else ``[tool.dspex]`` of its ``pyproject.toml``, else the
    defaults; then the environment overrides. Raises ``ConfigError`` on an unknown key or a wrong type."""
    if isinstance(config, Config):
        return config
    base = Path.cwd() if cwd is None else cwd
    if isinstance(config, Mapping):
        loaded = _parse(config, _Reader("config mapping", base))
    elif config is not None:
        loaded = _from_file(base / Path(config).expanduser())
    elif (base / CONFIG_FILE).is_file():
        loaded = _from_file(base / CONFIG_FILE)
    elif (base / "pyproject.toml").is_file():
        loaded = _from_file(base / "pyproject.toml")
    else:
        loaded = Config()
    return _apply_env(loaded)


def ensure_home(config: Config) -> Path:
    """Create ``config.home`` (mode 0700: it holds cached prompts and answers) and return it.

    An existing directory is left as it is: DSPEX_HOME may point at a directory the user owns and shares."""
    home = config.home
    try:
        home.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        if not home.is_dir():
            raise ConfigError("DSPEX_HOME", "", f"{home} exists and is not a directory") from None
    else:
        home.chmod(0o700)  # mkdir's mode is filtered by the umask
    return home
