"""Configuration (SPEC §8): file discovery, every key checked, environment overrides, DSPEX_HOME."""
from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from dspex.errors import DSPexError
from dspex.runtime.config import (
    CacheConfig,
    Config,
    ConfigError,
    PoolConfig,
    RuntimeConfig,
    ensure_home,
    load_config,
)

SPEC_EXAMPLE = """
lm = "openai:gpt-4o-mini@http://127.0.0.1:8000/v1"

[pools]                                       # worker processes, by job
general   = { size = 4, memory_mb = 512 }     # dspy-engine steps and tools
neural    = { size = 1, memory_mb = 4096, gpu = false }   # local models
optimizer = { size = 1, memory_mb = 4096 }

[runtime]
backend = "local"          # or "ray", with address = "auto" | "ray://host:port", to span machines

[cache]
memory_entries = 10000
disk = true
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DSPEX_LM", "DSPEX_HOME", "DSPEX_NO_EXTENSIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # never the real ~/.dspex


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_when_nothing_is_configured(tmp_path: Path) -> None:
    config = load_config(cwd=tmp_path)
    assert config == Config(home=tmp_path / "home" / ".dspex")
    assert config.lm is None and config.source is None and not config.no_extensions
    assert config.pools == {"general": PoolConfig(4, 512), "neural": PoolConfig(1, 4096, gpu=False),
                            "optimizer": PoolConfig(1, 4096)}
    assert config.runtime == RuntimeConfig(backend="local", address=None, concurrency=16)
    assert config.cache == CacheConfig(memory_entries=10000, disk=True)
    assert dict(config.lms) == {}


def test_the_spec_example_loads_from_dspex_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "dspex.toml", SPEC_EXAMPLE)
    config = load_config(cwd=tmp_path)
    assert config.source == path
    assert config.lm == "openai:gpt-4o-mini@http://127.0.0.1:8000/v1"
    assert config.pools["neural"] == PoolConfig(size=1, memory_mb=4096, gpu=False)
    assert config.cache == CacheConfig(10000, True)


def test_every_setting_is_read(tmp_path: Path) -> None:
    write(tmp_path / "dspex.toml", """
home = "state"
[pools]
general = { size = 8 }
neural = { gpu = true }
[runtime]
backend = "ray"
address = "ray://head:10001"
concurrency = 64
[cache]
memory_entries = 0
disk = false
[lms]
default = "local:smollm2"
""")
    config = load_config(cwd=tmp_path)
    assert config.home == tmp_path / "state"  # relative to the file
    assert config.pools["general"] == PoolConfig(size=8, memory_mb=512)  # unset keys keep their defaults
    assert config.pools["neural"] == PoolConfig(size=1, memory_mb=4096, gpu=True)
    assert config.runtime == RuntimeConfig(backend="ray", address="ray://head:10001", concurrency=64)
    assert config.cache == CacheConfig(memory_entries=0, disk=False)
    assert dict(config.lms) == {"default": "local:smollm2"}


def test_pyproject_tool_section_is_read_when_there_is_no_dspex_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.dspex]\nlm = "local:smollm2"\n'
                                             '[tool.dspex.cache]\ndisk = false\n')
    config = load_config(cwd=tmp_path)
    assert (config.lm, config.cache.disk, config.source) == ("local:smollm2", False, path)


def test_dspex_toml_wins_over_pyproject(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool.dspex]\nlm = "from-pyproject"\n')
    write(tmp_path / "dspex.toml", 'lm = "from-dspex-toml"\n')
    assert load_config(cwd=tmp_path).lm == "from-dspex-toml"


def test_pyproject_without_a_dspex_section_gives_defaults(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.ruff]\nline-length = 100\n')
    assert load_config(cwd=tmp_path).lm is None


def test_explicit_file_mapping_and_config(tmp_path: Path) -> None:
    path = write(tmp_path / "other.toml", 'lm = "dspy:openai/gpt-4o-mini"\n')
    write(tmp_path / "dspex.toml", 'lm = "ignored"\n')
    assert load_config(path).lm == "dspy:openai/gpt-4o-mini"
    assert load_config("other.toml", cwd=tmp_path).lm == "dspy:openai/gpt-4o-mini"
    assert load_config({"runtime": {"concurrency": 3}}, cwd=tmp_path).runtime.concurrency == 3
    ready = Config(lm="x")
    assert load_config(ready) is ready


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: no such configuration file"):
        load_config("nope.toml", cwd=tmp_path)


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "dspex.toml", "[cache]\nmemory_entries = \n")
    with pytest.raises(ConfigError, match=r"dspex.toml: invalid TOML: .*line 2"):
        load_config(cwd=tmp_path)


def test_environment_overrides_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "dspex.toml", 'lm = "from-file"\nhome = "file-home"\n')
    monkeypatch.setenv("DSPEX_LM", "local:smollm2")
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "env-home"))
    monkeypatch.setenv("DSPEX_NO_EXTENSIONS", "1")
    config = load_config(cwd=tmp_path)
    assert (config.lm, config.home, config.no_extensions) == ("local:smollm2", tmp_path / "env-home", True)
    assert load_config({"lm": "from-mapping"}).lm == "local:smollm2"


@pytest.mark.parametrize(("value", "expected"), [("0", False), ("", False), ("false", False), ("1", True),
                                                 ("yes", True)])
def test_no_extensions_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, expected: bool) -> None:
    monkeypatch.setenv("DSPEX_NO_EXTENSIONS", value)
    assert load_config(cwd=tmp_path).no_extensions is expected


def test_empty_environment_variables_are_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSPEX_LM", "")
    monkeypatch.setenv("DSPEX_HOME", "")
    config = load_config({"lm": "local:smollm2"}, cwd=tmp_path)
    assert (config.lm, config.home) == ("local:smollm2", tmp_path / "home" / ".dspex")


@pytest.mark.parametrize(("text", "message"), [
    ("[cahce]\ndisk = true\n", "dspex.toml: cahce: unknown key (did you mean 'cache'?)"),
    ("[cache]\nmemory_entires = 5\n", "dspex.toml: cache.memory_entires: unknown key (did you mean 'memory_entries'?)"),
    ("[pools]\nnerual = { size = 1 }\n", "dspex.toml: pools.nerual: unknown key (did you mean 'neural'?)"),
    ("[pools.general]\nsise = 2\n", "dspex.toml: pools.general.sise: unknown key (did you mean 'size'?)"),
    ("[runtime]\nbackend = \"rya\"\n", "dspex.toml: runtime.backend: unknown backend 'rya' (did you mean 'ray'?)"),
    ("zzz = 1\n", "dspex.toml: zzz: unknown key; expected one of lm, home, pools, runtime, cache, lms"),
])
def test_unknown_keys_are_named_with_a_suggestion(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "dspex.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    assert str(info.value).startswith(str(tmp_path / message))


@pytest.mark.parametrize(("data", "key", "message"), [
    ({"pools": {"general": {"size": "4"}}}, "pools.general.size", "expected int, got string '4'"),
    ({"pools": {"general": {"size": True}}}, "pools.general.size", "expected int, got boolean True"),
    ({"pools": {"general": {"size": 0}}}, "pools.general.size", "must be at least 1, got 0"),
    ({"pools": {"neural": 4}}, "pools.neural", "expected a table, got int"),
    ({"pools": []}, "pools", "expected a table, got array"),
    ({"cache": {"disk": 1}}, "cache.disk", "expected bool, got int 1"),
    ({"cache": {"memory_entries": -1}}, "cache.memory_entries", "must be at least 0, got -1"),
    ({"runtime": {"concurrency": 2.5}}, "runtime.concurrency", "expected int, got float 2.5"),
    ({"runtime": {"address": "auto"}}, "runtime.address", 'only applies to backend = "ray"'),
    ({"lm": 3}, "lm", "expected str, got int 3"),
    ({"lms": {"default": 1}}, "lms.default", "expected str, got int 1"),
    ({"lms": "local:smollm2"}, "lms", "expected a table of lm spec strings, got string"),
])
def test_wrong_types_are_errors(tmp_path: Path, data: dict[str, object], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data, cwd=tmp_path)
    assert info.value.key == key
    assert str(info.value) == f"config mapping: {key}: {message}"


def test_pyproject_errors_name_the_section(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.dspex]\nconcurrency = 4\n")
    with pytest.raises(ConfigError, match=r"pyproject.toml \[tool.dspex\]: concurrency: unknown key"):
        load_config(cwd=tmp_path)


def test_config_error_is_a_dspex_error() -> None:
    assert issubclass(ConfigError, DSPexError) and ConfigError.code == "CONFIG"


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load_config(cwd=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lm = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.pools["general"] = PoolConfig(1, 1)  # type: ignore[index]


def test_ensure_home_creates_a_private_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "a" / "b"))
    home = ensure_home(load_config(cwd=tmp_path))
    assert home == tmp_path / "a" / "b" and home.is_dir()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert ensure_home(load_config(cwd=tmp_path)) == home  # idempotent


def test_ensure_home_leaves_an_existing_directory_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    ensure_home(Config(home=shared))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_ensure_home_on_a_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "file", "")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        ensure_home(Config(home=tmp_path / "file"))


def test_default_home_is_under_the_user_home(tmp_path: Path) -> None:
    assert ensure_home(load_config(cwd=tmp_path)) == tmp_path / "home" / ".dspex"
