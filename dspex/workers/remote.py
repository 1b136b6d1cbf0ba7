"""The parent's side of work done in pools: dspy-engine steps, ``python(...)`` tools and local models.

Each piece runs in a worker when it can be rebuilt there (an LM with a ``worker_spec``, a tool declared
by ``module:function``) and in this process otherwise (a scripted or hand-built LM), so a program never
needs to know where it runs. A session's requests go to its own worker slot (strict affinity).
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Protocol

from dspex.engines.base import Engine, StepCall, StepResult
from dspex.ir.codec import encode_signature, encode_tool
from dspex.ir.program import ToolDecl
from dspex.lm.base import LM, LMRequest, LMResponse

__all__ = ["Pool", "RemoteDspyEngine", "RemoteLM", "remote_tool_runner", "step_request"]


class Pool(Protocol):
    """What the runtime needs of a pool, local (``WorkerPool``) or Ray (``RayPool``)."""

    name: str
    size: int

    def call(self, op: str, args: dict[str, Any] | None = None, *, slot: int | None = None,
             timeout: float | None = None) -> Any: ...

    async def acall(self, op: str, args: dict[str, Any] | None = None, *, slot: int | None = None,
                    timeout: float | None = None) -> Any: ...

    def generation(self, slot: int) -> int: ...

    def close(self) -> None: ...


PoolFor = Callable[[str], Pool]  # a pool by name, started on first use
SlotFor = Callable[[str], int]  # a session's worker slot


def step_request(call: StepCall, lm_spec: dict[str, Any]) -> dict[str, Any]:
    """A dspy step as the plain data of a ``dspy_step`` request."""
    return {"signature": encode_signature(call.signature), "module": call.module, "inputs": call.inputs,
            "options": call.options, "var_values": call.var_values, "lm": lm_spec, "session": call.session,
            "tools": {name: encode_tool(decl) for name, decl in call.tool_decls.items()}}


class RemoteDspyEngine(Engine):
    """The dspy engine, run in the ``general`` pool when the step can travel, in this process otherwise."""

    name = "dspy"

    def __init__(self, local: Engine, pool_for: PoolFor, slot_for: SlotFor):
        self.local, self.pool_for, self.slot_for = local, pool_for, slot_for

    def supports(self, module: str) -> bool:
        return self.local.supports(module)

    async def run(self, call: StepCall, lm: LM) -> StepResult:
        spec = lm.worker_spec()
        if spec is None or set(call.tool_decls) != set(call.tools):
            return await self.local.run(call, lm)
        slot = self.slot_for(call.session) if call.session is not None else None
        timeout = call.options.get("timeout")
        result = await self.pool_for("general").acall("dspy_step", step_request(call, spec), slot=slot,
                                                      timeout=None if timeout is None else float(timeout) * 4)
        return StepResult(result["outputs"], lm_calls=result["lm_calls"], prompt_tokens=result["prompt_tokens"],
                          completion_tokens=result["completion_tokens"], engine=self.name)


def remote_tool_runner(pool_for: PoolFor, slot_for: SlotFor) -> Callable[..., Any]:
    """Runs a ``python(...)`` tool in the ``general`` pool (on the session's slot when there is a session)."""

    async def run(tool: ToolDecl, args: dict[str, Any], session: str | None = None) -> Any:
        slot = slot_for(session) if session is not None else None
        return await pool_for("general").acall("tool", {"tool": encode_tool(tool), "args": args}, slot=slot)

    return run


class RemoteLM(LM):
    """A local model served by the ``neural`` pool: the weights load once, in a worker, not in this process."""

    def __init__(self, inner: LM, pool_for: PoolFor):
        spec = inner.worker_spec()
        if spec is None:
            raise ValueError(f"{inner.identity} cannot run in a worker")
        self.inner, self.spec, self.pool_for = inner, spec, pool_for
        self.identity = inner.identity
        self.supports_json_schema = inner.supports_json_schema

    def worker_spec(self) -> dict[str, Any] | None:
        return self.spec

    async def acomplete(self, request: LMRequest) -> LMResponse:
        data = {"messages": [{"role": m.role, "content": m.content} for m in request.messages],
                "temperature": request.temperature, "max_tokens": request.max_tokens,
                "json_schema": request.json_schema, "stop": list(request.stop), "timeout": request.timeout,
                "seed": request.seed}
        result = await self.pool_for("neural").acall("lm_complete", {"lm": self.spec, "request": data})
        return LMResponse(result["text"], result["prompt_tokens"], result["completion_tokens"], result["latency_s"],
                          result["model"])

    async def astream(self, request: LMRequest) -> AsyncIterator[str]:
        yield (await self.acomplete(request)).text
