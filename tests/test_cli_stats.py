"""``dspexc stats`` as a user runs it: real ``dspexc run`` processes against a real HTTP server on 127.0.0.1
record telemetry under DSPEX_HOME, then ``dspexc stats`` summarizes it per pipeline and per node (text and
JSON), with the adaptive scheduler's routes, a ``--since`` window, and garbled lines skipped."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dspex.runtime.telemetry import TELEMETRY_FILE
from tests.servers.openai_stub import Fault, OpenAIStub

ROOT = Path(__file__).parents[1]
REVIEWS = ROOT / "examples" / "reviews.dspex"
ROWS = [{"id": "a", "review": "Works great"}, {"id": "b", "review": "The app keeps crashing"},
        {"id": "c", "review": "Love it"}, {"id": "d", "review": "garbage"}, {"id": "e", "review": "Fine, I guess"}]
SAID = "Works great"  # an input: telemetry must never hold it


def classify(body: dict[str, Any]) -> str:
    """A well-behaved model: negative when the review says 'crash', an invalid answer for 'garbage'."""
    text = " ".join(str(m["content"]) for m in body["messages"] if m["role"] == "user")
    if "garbage" in text:
        return '{"label": "superb", "confidence": 7}'
    return json.dumps({"label": "negative" if "crash" in text else "positive", "confidence": 0.8})


def dspexc(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dspex.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env, input=stdin)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """Two ``dspexc run`` batches of ROWS (the second served from the cache) in one DSPEX_HOME; the first
    request of all gets a 500, which the resilience layer retries."""
    home = tmp_path_factory.mktemp("stats") / "home"
    env = {**os.environ, "DSPEX_HOME": str(home)}
    rows = "".join(json.dumps(r) + "\n" for r in ROWS)
    with OpenAIStub(answer=classify) as stub:
        stub.inject(Fault(status=500, message="transient"))
        for _ in range(2):
            done = dspexc("run", str(REVIEWS), "--pipeline", "classify_one", "--lm", f"openai:stub@{stub.base_url}",
                          env=env, stdin=rows)
            assert done.returncode == 1, done.stderr  # the 'garbage' row fails
            results = [json.loads(line) for line in done.stdout.splitlines()]
            assert [r["id"] for r in results] == ["a", "b", "c", "d", "e"] and "error" in results[3]
    yield env, home


def stats(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = dspexc("stats", *args, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def stats_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = stats(env, "--format", "json", *args)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_json_counts_runs_calls_errors_cache_hits_retries_and_tokens(recorded: tuple[dict[str, str], Path]) -> None:
    env, _ = recorded
    data = stats_json(env)
    (pipeline,) = data["pipelines"]
    (node,) = data["nodes"]
    assert (pipeline["pipeline"], node["pipeline"], node["node"]) == ("classify_one", "classify_one", "c")
    assert pipeline["calls"] == 10 and pipeline["errors"] == 2 and pipeline["error_rate"] == 0.2  # runs
    assert node["calls"] == node["steps"] == 10 and node["errors"] == 2
    assert node["cache_hits"] == 4 and node["cache_hit_rate"] == 0.4  # the second batch: 4 good rows cached
    assert node["retries"] == pipeline["retries"] == 1  # the 500, retried inside the first row that met it
    assert node["prompt_tokens"] > 0 and node["completion_tokens"] > 0
    assert node["prompt_tokens"] == pipeline["prompt_tokens"]
    assert node["validation_failures"] >= 2 and node["validation_failure_rate"] > 0
    for row in (pipeline, node):
        assert 0 < row["p50_s"] <= row["p95_s"] <= row["p99_s"] < 60
    assert data["skipped"] == 0 and data["events"] >= 20
    assert [r["node"] for r in data["routes"]] == ["classify_one.c"]  # what the scheduler learnt, saved at exit
    assert data["routes"][0]["route"] in ("native/@default", "dspy/@default") and data["routes"][0]["samples"] >= 6


def test_text_has_a_row_per_pipeline_and_node_and_the_routes(recorded: tuple[dict[str, str], Path]) -> None:
    env, home = recorded
    data = stats_json(env)
    done = stats(env)
    assert done.returncode == 0 and done.stderr == ""
    out = done.stdout
    assert f"{data['events']} events from " in out.splitlines()[0]
    for title, header in (("pipelines", "runs"), ("nodes", "calls"), ("routes", "reason")):
        assert re.search(rf"^\s*{title}\s*$", out, re.MULTILINE), out
        assert header in out
    for column in ("p50", "p95", "p99", "errors", "cache hits", "retries", "tokens in", "tokens out"):
        assert column in out
    node = data["nodes"][0]
    (line,) = [ln for ln in out.splitlines() if re.match(r"\s*classify_one\s+c\s", ln)]
    cells = line.split()
    assert cells[:3] == ["classify_one", "c", "10"] and "20.0%" in cells and "40.0%" in cells
    assert cells[-2:] == [str(node["prompt_tokens"]), str(node["completion_tokens"])]
    (pipeline_line,) = [ln for ln in out.splitlines() if re.match(r"\s*classify_one\s+10\s", ln)]
    assert "20.0%" in pipeline_line.split()
    assert re.search(r"classify_one\.c\s+(native|dspy)/@default\s", out)
    assert SAID not in (home / TELEMETRY_FILE).read_text(encoding="utf-8")


def test_since_windows(recorded: tuple[dict[str, str], Path]) -> None:
    env, _ = recorded
    everything = stats_json(env)
    recent = stats_json(env, "--since", "1h")
    assert recent["pipelines"] == everything["pipelines"] and recent["nodes"] == everything["nodes"]
    future = stats_json(env, "--since", "2999-01-01T00:00:00")
    assert (future["events"], future["pipelines"], future["nodes"]) == (0, [], [])
    assert future["routes"] == everything["routes"]  # the routes are the scheduler's state, not a window
    text = stats(env, "--since", "2999-01-01T00:00:00")
    assert text.returncode == 0 and text.stdout.startswith("0 events") and "classify_one  " not in text.stdout
    bogus = stats(env, "--since", "bogus")
    assert bogus.returncode == 2 and bogus.stdout == ""
    assert "invalid --since 'bogus'" in bogus.stderr and "30m, 1h, 2d or 1w" in bogus.stderr


def test_garbled_lines_are_skipped_not_fatal(recorded: tuple[dict[str, str], Path],
                                             tmp_path: Path) -> None:
    env, home = recorded
    copy = tmp_path / "home"
    copy.mkdir()
    good = (home / TELEMETRY_FILE).read_bytes()
    torn = b'{"kind": "node_end", "at": 17'  # a crash mid-write
    (copy / TELEMETRY_FILE).write_bytes(good + b"not json at all\n\xff\xfe\x00garbage\n" + b'{"kind": "nope"}\n'
                                        + b"[1, 2]\n" + torn)
    env = {**env, "DSPEX_HOME": str(copy)}
    data = stats_json(env)
    assert data["skipped"] == 5
    assert data["pipelines"][0]["calls"] == 10 and data["nodes"][0]["calls"] == 10  # the good lines all count
    text = stats(env)
    assert text.returncode == 0 and "5 unreadable line(s) skipped" in text.stdout
