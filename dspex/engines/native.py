"""The native engine: ``predict``, ``chain_of_thought`` and ``best_of`` without dspy.

Render the step into chat messages, ask for schema-constrained JSON where the LM can give it, parse the
answer leniently, coerce and validate it, and on a validation failure re-ask with the error fed back, up
to ``retries`` times. Framework overhead per call is what it competes on, so everything that depends only
on the signature, module and var values (system prompt, schema, validator) is built once and cached.
"""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Mapping

from dspex.engines.base import Engine, StepCall, StepResult, ValidationError
from dspex.engines.parse_output import parse_output
from dspex.engines.render import json_schema, output_fields, reask_messages, render_system, render_user
from dspex.ir.program import Signature
from dspex.lm.base import LM, LMRequest, LMResponse, Message
from dspex.native import compile_validator

__all__ = ["NativeEngine", "NATIVE_MODULES", "DEFAULT_N", "BEST_OF_TEMPERATURE"]

NATIVE_MODULES = frozenset({"predict", "chain_of_thought", "best_of"})
DEFAULT_N = 3
BEST_OF_TEMPERATURE = 1.0  # like dspy.BestOfN: candidates at temperature 0 would all be the same
_MAX_CACHED = 4096  # plans per engine and system prompts per plan; the cache is cleared when full


class _Plan:
    """What one (signature, module) needs on every call, built once."""

    __slots__ = ("signature", "module", "fields", "validate", "schema", "_systems")

    def __init__(self, signature: Signature, module: str):
        self.signature, self.module = signature, module
        self.fields = output_fields(signature, module)
        self.validate = compile_validator(self.fields).validate
        self.schema = json_schema(signature, module)
        self._systems: dict[str, str] = {}

    def system(self, var_values: Mapping[str, Any]) -> str:
        """The system prompt for these var values (only the vars the instructions read count)."""
        names = self.signature.instruction_vars
        key = repr([var_values.get(n) for n in names]) if names else ""
        text = self._systems.get(key)
        if text is None:
            if len(self._systems) >= _MAX_CACHED:
                self._systems.clear()
            used = {n: var_values[n] for n in names if n in var_values}
            text = self._systems[key] = render_system(self.signature, self.module, used)
        return text

    def check(self, text: str) -> dict[str, Any]:
        return self.validate(parse_output(text, self.fields))


class NativeEngine(Engine):
    """Runs steps in-process against any ``LM``; see the module docstring for the loop."""

    name = "native"

    def __init__(self) -> None:
        self._plans: dict[tuple[int, str], tuple[Signature, _Plan]] = {}  # by identity: the fast path
        self._shared: dict[tuple[str, str, str], _Plan] = {}  # by structure: equal signatures share one plan

    def supports(self, module: str) -> bool:
        return module in NATIVE_MODULES

    def _plan(self, signature: Signature, module: str) -> _Plan:
        key = (id(signature), module)
        hit = self._plans.get(key)
        if hit is not None and hit[0] is signature:
            return hit[1]
        if module not in NATIVE_MODULES:
            raise ValueError(f"the native engine does not run {module!r}")
        shared = (signature.fingerprint, signature.name, module)
        plan = self._shared.get(shared)
        if plan is None:
            if len(self._shared) >= _MAX_CACHED:
                self._shared.clear()
            plan = self._shared[shared] = _Plan(signature, module)
        if len(self._plans) >= _MAX_CACHED:
            self._plans.clear()
        self._plans[key] = (signature, plan)  # holding the signature keeps its id from being reused
        return plan

    async def run(self, call: StepCall, lm: LM) -> StepResult:
        plan = self._plan(call.signature, call.module)
        options = call.options
        messages = (Message("system", plan.system(call.var_values)),
                    Message("user", render_user(call.signature, call.inputs)))
        timeout = options.get("timeout")
        request = LMRequest(messages, temperature=options.get("temperature"), max_tokens=options.get("max_tokens"),
                            json_schema=plan.schema if lm.supports_json_schema else None,
                            timeout=None if timeout is None else float(timeout))
        if call.module == "best_of":
            return await _best_of(plan, call, lm, request)
        result = StepResult({}, engine=self.name)
        retries = call.retries
        attempt = 0
        while True:
            response = await lm.acomplete(request)
            _count(result, response)
            try:
                result.outputs = plan.check(response.text)
            except ValidationError as error:
                if attempt >= retries:
                    raise
                attempt += 1
                request = replace(request, messages=reask_messages(messages, response.text, error, plan.fields))
                continue
            result.retries = attempt
            return result


async def _best_of(plan: _Plan, call: StepCall, lm: LM, request: LMRequest) -> StepResult:
    """``n`` candidates at once; the first (by index) that validates wins. When none does, the first one's
    error is fed back and a fresh round of ``n`` runs, up to ``retries`` times."""
    n = max(1, int(call.options.get("n", DEFAULT_N)))
    if request.temperature is None:
        request = replace(request, temperature=BEST_OF_TEMPERATURE)
    messages = request.messages
    result = StepResult({}, engine="native")
    retries = call.retries
    attempt = 0
    while True:
        candidates = [replace(request, seed=attempt * n + i) for i in range(n)]  # distinct seeds: distinct samples
        responses = await asyncio.gather(*(lm.acomplete(c) for c in candidates))
        errors: list[tuple[LMResponse, ValidationError]] = []
        for response in responses:
            _count(result, response)
        for response in responses:
            try:
                result.outputs = plan.check(response.text)
            except ValidationError as error:
                errors.append((response, error))
                continue
            result.retries = attempt
            return result
        if attempt >= retries:
            raise errors[0][1]
        attempt += 1
        request = replace(request, messages=reask_messages(messages, errors[0][0].text, errors[0][1], plan.fields))


def _count(result: StepResult, response: LMResponse) -> None:
    result.lm_calls += 1
    result.prompt_tokens += response.prompt_tokens
    result.completion_tokens += response.completion_tokens
