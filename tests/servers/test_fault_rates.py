"""The stub's faults at rates, its degradation and its control endpoint (what tests/runtime/test_faults.py and
benchmarks/test_adaptation.py stand on)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.servers.openai_stub import CONTROL_MAX_BYTES, Degrade, FaultRates, OpenAIStub, shout

CHAT = {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": 'text: "hi"'}]}


def outcomes(stub: OpenAIStub, n: int, timeout: float = 5.0) -> list[str]:
    """``n`` chat requests one after another (a new connection after a dropped one); each one's outcome."""
    with httpx.Client(base_url=stub.base_url, timeout=timeout) as client:
        for _ in range(n):
            try:
                client.post("/chat/completions", json=CHAT)
            except httpx.TransportError:
                pass
    return [r.outcome for r in stub.requests]


def test_faults_come_at_their_rates_from_a_seeded_draw() -> None:
    rates = FaultRates(server_error=0.2, rate_limited=0.1, truncate=0.1, disconnect=0.1, retry_after="2")
    with OpenAIStub(shout, rates=rates, seed=5) as first, OpenAIStub(shout, rates=rates, seed=5) as second:
        seen = outcomes(first, 400)
        assert outcomes(second, 400) == seen  # the same seed, the same faults
        answers = []
        with httpx.Client(base_url=first.base_url) as client:
            for _ in range(40):
                try:
                    answers.append(client.post("/chat/completions", json=CHAT))
                except httpx.TransportError:  # dropped
                    pass
    shares = {kind: seen.count(kind) / len(seen) for kind in ("ok", "server_error", "rate_limited", "truncate",
                                                              "disconnect")}
    assert shares["ok"] == pytest.approx(0.5, abs=0.1)
    for kind in ("rate_limited", "truncate", "disconnect"):
        assert shares[kind] == pytest.approx(0.1, abs=0.05), kind
    assert shares["server_error"] == pytest.approx(0.2, abs=0.07)
    assert first.counts == Counter(r.outcome for r in first.requests)
    limited = [a for a in answers if a.status_code == 429]
    assert len(limited) == first.counts["rate_limited"] - seen.count("rate_limited")
    assert limited and all(a.headers["retry-after"] == "2" for a in limited)
    complete = []
    for answer in (a for a in answers if a.status_code == 200):
        try:
            complete.append(answer.json()["choices"][0]["message"]["content"])
        except json.JSONDecodeError:  # a truncated body
            pass
    assert set(complete) == {'{"shout": "HI"}'}
    assert len(complete) == first.counts["ok"] - seen.count("ok")


def test_a_hang_lasts_until_the_client_gives_up() -> None:
    with OpenAIStub(shout, rates=FaultRates(hang=1.0)) as stub:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{stub.base_url}/chat/completions", json=CHAT, timeout=0.2)
        deadline = time.monotonic() + 5
        while stub._handlers and time.monotonic() < deadline:  # the handler ends with the client's connection
            time.sleep(0.01)
        assert not stub._handlers and stub.counts == {"hang": 1}


def test_degrading_multiplies_the_latency_and_answers_some_wrong() -> None:
    with OpenAIStub(shout, latency=0.01, seed=1) as stub, httpx.Client(base_url=stub.base_url) as client:
        def timed(n: int) -> tuple[float, list[str]]:
            began = time.perf_counter()
            texts = [client.post("/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]
                     for _ in range(n)]
            return (time.perf_counter() - began) / n, texts

        healthy, texts = timed(10)
        assert set(texts) == {'{"shout": "HI"}'}
        stub.set_degrade(latency_factor=3, wrong_share=0.3)
        slow, texts = timed(60)
        assert slow >= 0.03 and slow - healthy >= 0.015  # 3 x 10 ms, against 10 ms (plus the same overheads)
        assert texts.count(Degrade().wrong_answer) == stub.counts["wrong"]
        assert stub.counts["wrong"] / 60 == pytest.approx(0.3, abs=0.15)
        stub.set_degrade()  # healed
        assert timed(5)[1] == ['{"shout": "HI"}'] * 5


@pytest.mark.parametrize(("kind", "value"), [
    (FaultRates, {"hang": 1.5}), (FaultRates, {"server_error": 0.6, "truncate": 0.6}),
    (FaultRates, {"retry_after": "soon"}), (FaultRates, {"disconnect": True}),
    (Degrade, {"latency_factor": -1}), (Degrade, {"latency_factor": 1e6}), (Degrade, {"wrong_share": 2}),
])
def test_bad_rates_and_degradations_are_refused(kind: type, value: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        kind(**value)


def test_the_control_endpoint_of_a_child_process() -> None:
    command = [sys.executable, "-m", "tests.servers.openai_stub", "--answer-fn", "tests.servers.openai_stub:shout",
               "--control", "--rate", "server_error=1", "--seed", "3"]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            base_url = proc.stdout.readline().strip()
            root = base_url.removesuffix("/v1")
            with httpx.Client() as client:
                assert client.post(f"{base_url}/chat/completions", json=CHAT).status_code == 500
                state = client.get(f"{root}/_control").json()
                assert state["rates"]["server_error"] == 1 and state["counts"] == {"server_error": 1}
                changed = client.post(f"{root}/_control", json={"rates": {}, "reset_counts": True,
                                                                "degrade": {"wrong_share": 1.0}}).json()
                assert changed["rates"]["server_error"] == 0 and changed["degrade"]["wrong_share"] == 1.0
                assert changed["counts"] == {} and changed["requests"] == 0
                wrong = client.post(f"{base_url}/chat/completions", json=CHAT).json()
                assert json.loads(wrong["choices"][0]["message"]["content"]) == {"unexpected": "wrong-shaped answer"}
                for bad in ({"rates": {"hang": 2}}, {"degrade": {"speed": 3}}, {"nonsense": 1}, [1],
                            {"reset_counts": "yes"}):
                    assert client.post(f"{root}/_control", json=bad).status_code == 400, bad
                assert client.get(f"{root}/_control").json()["degrade"]["wrong_share"] == 1.0  # unchanged by those
                big = client.post(f"{root}/_control", content=b" " * (CONTROL_MAX_BYTES + 1))
                assert big.status_code == 413
                assert client.put(f"{root}/_control", json={}).status_code == 405
        finally:
            proc.stdin.close()
        assert proc.wait(10) == 0


def test_without_control_the_endpoint_does_not_exist() -> None:
    with OpenAIStub() as stub:
        assert httpx.post(f"{stub.base_url.removesuffix('/v1')}/_control", json={"rates": {}}).status_code == 404
        assert stub.rates == FaultRates()
