"""The ``dspy`` engine (SPEC §3.9): a step run by the real DSPy module of its kind, built from ``to_dspy()``,
with the step's LM as a ``dspy.LM``; its outputs then pass the same validation as the native engine's.

DSPy re-asks on its own parse failures, so one validation pass follows: a value that still breaks its
field's type or ``where`` rule raises ``ValidationError``. Modules are built once per signature fingerprint,
module, rendered instructions and options, and kept in an LRU. DSPy is imported on the first run.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from dspex.engines.base import Engine, StepCall, StepResult, ValidationError
from dspex.engines.dspy_lm import STEP_LOOP, as_lm_error, to_dspy_lm
from dspex.errors import DSPexError
from dspex.ir.modules import MODULES, canonical_module
from dspex.ir.program import Field, Signature
from dspex.lm.base import LM

if TYPE_CHECKING:
    import dspy

__all__ = ["DspyEngine", "MissingRequirementError"]

Runner = Callable[[dict[str, Any]], Awaitable[Any]]  # the step's inputs -> a dspy.Prediction (None: all failed)
_VAR = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
_PARSED_FIELD = re.compile(r"parse field (\w+)")
_SWALLOWING = frozenset({"best_of", "refine"})  # dspy prints their attempts' errors and returns None


class MissingRequirementError(DSPexError):
    """A module needs something this machine lacks (``program_of_thought`` needs Deno)."""

    code = "REQUIREMENT"


@dataclass(frozen=True, slots=True)
class _Built:
    run: Runner
    validate: Callable[[dict[str, Any]], dict[str, Any]]
    outputs: tuple[str, ...]  # read from the prediction: the signature's outputs, then the module's extras


class DspyEngine(Engine):
    """Runs every module of SPEC §3.9 through DSPy.

    ``interpreter_factory`` replaces dspy's Deno sandbox for ``program_of_thought`` (``dspy.LocalInterpreter``
    runs code in a local subprocess, which is not a sandbox).
    """

    name = "dspy"

    def __init__(self, *, cache_size: int = 256, interpreter_factory: Callable[[], Any] | None = None):
        self.cache_size = cache_size
        self.interpreter_factory = interpreter_factory
        self._modules: OrderedDict[tuple[Any, ...], _Built] = OrderedDict()

    def supports(self, module: str) -> bool:
        return canonical_module(module) in MODULES

    async def run(self, call: StepCall, lm: LM) -> StepResult:
        import dspy

        module = canonical_module(call.module)
        built = self.module_for(call)
        dspy_lm = to_dspy_lm(lm, temperature=call.options.get("temperature"),
                             max_tokens=call.options.get("max_tokens"), timeout=call.options.get("timeout"))
        tally, failures = _tally(), _last_failure()
        settings: dict[str, Any] = {"lm": dspy_lm, "usage_tracker": tally, "disable_history": True}
        if module in _SWALLOWING:
            settings["callbacks"] = [failures]
        token = STEP_LOOP.set(asyncio.get_running_loop())
        try:
            with dspy.context(**settings):
                prediction = await built.run(_inputs(call.signature, call.inputs))
            if prediction is None:
                raise failures.error or DSPexError(f"every attempt of {module} failed")
        except Exception as e:
            failure = _failure(e, call.signature.name)
            if failure is None or failure is e:
                raise
            if failure.__traceback__ is not None:  # our adapter's own error, which dspy wrapped
                raise failure from None
            raise failure from e
        finally:
            STEP_LOOP.reset(token)
        values = {name: _plain(prediction[name]) for name in built.outputs if name in prediction}
        if "trajectory" in values and module == "react":
            values["trajectory"] = {k: v if isinstance(v, str) else json.dumps(v, default=str)
                                    for k, v in values["trajectory"].items()}
        return StepResult(built.validate(values), lm_calls=tally.calls, prompt_tokens=tally.prompt_tokens,
                          completion_tokens=tally.completion_tokens, engine=self.name)

    def module_for(self, call: StepCall) -> _Built:
        """The built module for this step, from the LRU when an equal step was built before."""
        module = canonical_module(call.module)
        sig = call.signature
        instructions = _fill(sig.instructions, call.var_values)
        tools = tuple((name, id(fn)) for name, fn in sorted(call.tools.items())) if module == "react" else ()
        key = (sig.fingerprint, module, instructions, tools,
               *(call.options.get(k) for k in ("n", "threshold", "max_iters")))
        built = self._modules.get(key)
        if built is None:
            built = self._modules[key] = self._build(call, module, instructions)
            if len(self._modules) > self.cache_size:
                self._modules.popitem(last=False)
        else:
            self._modules.move_to_end(key)
        return built

    def _build(self, call: StepCall, module: str, instructions: str) -> _Built:
        import dspy

        from dspex.native import compile_validator

        sig = call.signature
        dspy_sig = sig.to_dspy()
        if instructions != sig.instructions:
            dspy_sig = dspy_sig.with_instructions(instructions)
        extras = tuple(Field(name, t) for name, t in MODULES[module].extra_outputs)
        validator = compile_validator(sig.outputs + extras)
        outputs = tuple(f.name for f in sig.outputs + extras)

        def reward(_inputs: dict[str, Any], prediction: Any) -> float:
            try:
                validator.validate({name: _plain(prediction[name]) for name in outputs if name in prediction})
            except ValidationError:
                return 0.0
            return 1.0

        n = int(call.options.get("n", 3))
        run: Runner
        if module in ("predict", "chain_of_thought", "react"):
            run = _async(_make_async_module(dspy, module, dspy_sig, call))
        elif module == "best_of":
            inner = dspy.Predict(dspy_sig)
            run = _fresh(lambda: dspy.BestOfN(inner, N=n, reward_fn=reward, threshold=1.0))
        elif module == "refine":
            inner = dspy.Predict(dspy_sig)
            threshold = float(call.options.get("threshold", 1.0))
            run = _fresh(lambda: dspy.Refine(inner, N=n, reward_fn=reward, threshold=threshold))
        elif module == "multi_chain_comparison":
            run = _compared(dspy.ChainOfThought(dspy_sig), dspy.MultiChainComparison(dspy_sig, M=n), n)
        else:
            assert module == "program_of_thought", module
            run = _in_thread(self._program_of_thought(dspy, dspy_sig, call))
        return _Built(run, validator.validate, outputs)

    def _program_of_thought(self, dspy: Any, dspy_sig: type[dspy.Signature], call: StepCall) -> dspy.Module:
        factory = self.interpreter_factory
        if factory is None:
            _require_deno()
            factory = dspy.PythonInterpreter
        return dspy.ProgramOfThought(dspy_sig, max_iters=int(call.options.get("max_iters", 3)),
                                     interpreter_factory=factory)


def _make_async_module(dspy: Any, module: str, dspy_sig: type[dspy.Signature], call: StepCall) -> dspy.Module:
    if module == "predict":
        return dspy.Predict(dspy_sig)
    if module == "chain_of_thought":
        return dspy.ChainOfThought(dspy_sig)
    tools = [_tool(dspy, name, fn) for name, fn in call.tools.items()]
    max_iters = call.options.get("max_iters")
    return dspy.ReAct(dspy_sig, tools=tools, **({"max_iters": int(max_iters)} if max_iters is not None else {}))


def _async(module: dspy.Module) -> Runner:
    return lambda inputs: module.acall(**inputs)


def _in_thread(module: dspy.Module) -> Runner:
    """DSPy modules without an async path run in a worker thread; their LM calls come back to the step's loop."""
    return lambda inputs: asyncio.to_thread(module, **inputs)


def _fresh(make: Callable[[], dspy.Module]) -> Runner:
    """BestOfN and Refine count failures on the instance, so each run gets its own (cheap) wrapper around the
    cached inner module."""
    return lambda inputs: asyncio.to_thread(lambda: make()(**inputs))


def _compared(attempt: dspy.Module, compare: dspy.Module, n: int) -> Runner:
    """MultiChainComparison compares ``n`` finished chains of thought: they run concurrently first."""

    async def run(inputs: dict[str, Any]) -> Any:
        chains = await asyncio.gather(*(attempt.acall(**inputs, config={"rollout_id": i, "temperature": 1.0})
                                        for i in range(n)))
        return await asyncio.to_thread(compare, list(chains), **inputs)

    return run


def _tool(dspy: Any, name: str, fn: Callable[..., Any]) -> Any:
    """A ``dspy.Tool`` for ``fn``; a synchronous tool runs in a worker thread so it never blocks the loop."""
    tool = dspy.Tool(fn, name=name)
    if not inspect.iscoroutinefunction(fn):
        async def off_loop(**kwargs: Any) -> Any:
            return await asyncio.to_thread(fn, **kwargs)

        tool.func = off_loop
    return tool


def _require_deno() -> None:
    try:
        import deno  # noqa: F401  (the binary dspy's sandbox runs, as shipped by `pip install "dspy[deno]"`)
    except ImportError:
        if shutil.which("deno") is None:
            raise MissingRequirementError(
                "program_of_thought on the dspy engine runs the generated code in dspy's Deno sandbox, and Deno "
                "is not installed: pip install \"dspy[deno]\" (its first run also fetches Pyodide), or give "
                "DspyEngine(interpreter_factory=...)") from None


def _fill(instructions: str, var_values: dict[str, Any]) -> str:
    """``{{var}}`` placeholders replaced as the native engine does (text as is, other values as JSON); a var
    without a value stays as written."""
    if "{{" not in instructions:
        return instructions
    return _VAR.sub(lambda m: _var_text(var_values[m[1]]) if m[1] in var_values else m[0], instructions)


def _var_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _inputs(sig: Signature, given: dict[str, Any]) -> dict[str, Any]:
    return {f.name: given.get(f.name, f.default) for f in sig.inputs if f.name in given or f.has_default}


def _plain(value: Any) -> Any:
    """Record outputs come back as pydantic models: the validator (and the caller) want plain values."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _failure(error: BaseException, signature: str) -> DSPexError | None:
    """Our error for a failure inside dspy: an unparsable answer is a ``ValidationError``, an LM failure an
    ``LMError``; None for anything else (a tool's own exception, a bug), which propagates as it is."""
    from dspy.utils.exceptions import AdapterParseError

    if isinstance(error, DSPexError):
        return error
    if isinstance(error, AdapterParseError):
        named = _PARSED_FIELD.search(str(error))
        parsed = error.parsed_result if isinstance(error.parsed_result, dict) else {}
        missing = [name for name in error.signature.output_fields if name not in parsed]
        path = named[1] if named else (missing[0] if missing else signature)
        return ValidationError(path, error.lm_response, f"{error.adapter_name} could not parse the answer")
    return as_lm_error(error)


@functools.cache
def _tally_class() -> type[Any]:
    from dspy.utils.usage_tracker import UsageTracker

    class Tally(UsageTracker):  # type: ignore[misc]
        """Counts LM calls and tokens: dspy reports every call here, history and its own tracking off."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = self.prompt_tokens = self.completion_tokens = 0

        def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
            self.calls += 1
            self.prompt_tokens += usage_entry.get("prompt_tokens") or 0
            self.completion_tokens += usage_entry.get("completion_tokens") or 0

    return Tally


def _tally() -> Any:
    return _tally_class()()


@functools.cache
def _last_failure_class() -> type[Any]:
    from dspy.utils.callback import BaseCallback

    class LastFailure(BaseCallback):  # type: ignore[misc]
        """Keeps the last exception a module raised, which BestOfN and Refine only print."""

        error: BaseException | None = None

        def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
            if exception is not None:
                self.error = exception

    return LastFailure


def _last_failure() -> Any:
    return _last_failure_class()()
