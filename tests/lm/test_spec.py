"""LMs from spec strings (SPEC §6) and from ``.dspex`` lm declarations (SPEC §3.5)."""
from __future__ import annotations

import pytest

import dspex
from dspex.ir.program import LMDecl
from dspex.lm.combinators import FallbackLM, RoundRobinLM
from dspex.lm.dspy_lm import DspyLM
from dspex.lm.instructor_lm import InstructorLM
from dspex.lm.local import LocalLM
from dspex.lm.openai import OpenAILM
from dspex.lm.spec import SPEC_FORMS, lm_from_decl, lm_from_spec, lms_from_decls
from tests.servers.openai_stub import OpenAIStub

SOURCE = """
lm default = local("smollm2", n_ctx = 1024)
lm fast    = openai(base_url = "http://127.0.0.1:8080/v1", model = "smollm2", api_key_env = "MY_KEY", timeout = 5)
lm typed   = instructor(model = "m", base_url = "http://127.0.0.1:8080/v1", mode = "tools")
lm remote  = dspy("openai/gpt-4o-mini", temperature = 0.5)
lm safe    = fallback(fast, default)
lm spread  = round_robin(safe, typed)
"""


@pytest.mark.parametrize(("spec", "kind", "identity"), [
    ("local:smollm2", LocalLM, "local:smollm2"),
    ("local:/models/tiny.gguf", LocalLM, "local:/models/tiny.gguf"),
    ("openai:gpt-4o-mini", OpenAILM, "openai:gpt-4o-mini@https://api.openai.com/v1"),
    ("openai:smollm2@http://127.0.0.1:8080/v1", OpenAILM, "openai:smollm2@http://127.0.0.1:8080/v1"),
    ("openai:claude@2024@https://gw.example/v1", OpenAILM, "openai:claude@2024@https://gw.example/v1"),
    ("instructor:m@http://127.0.0.1:8080/v1", InstructorLM, "instructor:m@http://127.0.0.1:8080/v1"),
    ("dspy:openai/gpt-4o-mini", DspyLM, "dspy:openai/gpt-4o-mini"),
])
def test_spec_strings(spec: str, kind: type, identity: str) -> None:
    lm = lm_from_spec(spec)
    assert type(lm) is kind and lm.identity == identity


@pytest.mark.parametrize("spec", ["", "smollm2", "local:", "openai:", "openai:a b", "dspy:gpt-4o", "vllm:m",
                                  "openai:m@ftp://host"])
def test_bad_spec_strings_name_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ValueError, match="bad lm spec") as caught:
        lm_from_spec(spec)
    assert all(form in str(caught.value) for form in SPEC_FORMS)


def test_a_spec_string_lm_answers_over_http() -> None:
    with OpenAIStub() as stub:
        lm = lm_from_spec(f"openai:m@{stub.base_url}")
        try:
            assert lm.complete(dspex.lm.LMRequest((dspex.lm.Message("user", "hi"),))).text == "hi"
        finally:
            assert isinstance(lm, OpenAILM)
            lm.close()


def test_declarations_of_a_compiled_program() -> None:
    lms = dspex.compile_source(SOURCE, filename="lms.dspex").lms
    built = lms_from_decls(lms)
    fast, default, typed, remote = built["fast"], built["default"], built["typed"], built["remote"]
    assert isinstance(fast, OpenAILM) and fast.api_key_env == "MY_KEY" and fast.timeout == 5
    assert fast.base_url == "http://127.0.0.1:8080/v1" and fast.model == "smollm2"
    assert isinstance(default, LocalLM) and default.n_ctx == 1024
    assert isinstance(typed, InstructorLM) and typed.mode.name == "TOOLS"
    assert isinstance(remote, DspyLM) and remote.identity == "dspy:openai/gpt-4o-mini"
    safe, spread = built["safe"], built["spread"]
    assert isinstance(safe, FallbackLM) and safe.members == (fast, default)  # shared instances
    assert isinstance(spread, RoundRobinLM) and spread.members == (safe, typed)
    assert spread.identity == ("round_robin(fallback(openai:smollm2@http://127.0.0.1:8080/v1,local:smollm2),"
                               "instructor:m@http://127.0.0.1:8080/v1)")


def test_lm_from_decl_builds_members_recursively() -> None:
    lms = dspex.compile_source(SOURCE, filename="lms.dspex").lms
    spread = lm_from_decl(lms["spread"], lms)
    assert isinstance(spread, RoundRobinLM)
    assert [type(m) for m in spread.members] == [FallbackLM, InstructorLM]


def test_broken_declarations() -> None:
    loop = {"a": LMDecl("a", "fallback", members=("b",)), "b": LMDecl("b", "round_robin", members=("a",))}
    with pytest.raises(ValueError, match="includes itself: a -> b -> a"):
        lm_from_decl(loop["a"], loop)
    with pytest.raises(ValueError, match="undeclared lm 'ghost'"):
        lm_from_decl(LMDecl("x", "fallback", members=("ghost",)), {})
    with pytest.raises(ValueError, match="lm 'odd'.*colour"):
        lm_from_decl(LMDecl("odd", "openai", (("model", "m"), ("colour", "red"))), {})
    with pytest.raises(ValueError, match="unknown lm provider 'vllm'"):
        lm_from_decl(LMDecl("v", "vllm"), {})
