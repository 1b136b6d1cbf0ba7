"""Loading ``python("module:function")`` tools, once each. The compiler never imports user code; this
is the moment it happens, with a clear ``ToolLoadError`` when the module or function is not there."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from dspex.errors import ToolLoadError
from dspex.ir.program import ToolDecl

__all__ = ["load_tool"]

_loaded: dict[str, Callable[..., Any]] = {}


def load_tool(tool: ToolDecl) -> Callable[..., Any]:
    if tool.target in _loaded:
        return _loaded[tool.target]
    module_name, _, function = tool.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ToolLoadError(f"tool '{tool.name}': cannot import module '{module_name}' ({exc}); is it on "
                            "PYTHONPATH?") from exc
    fn = module
    for part in function.split("."):
        fn = getattr(fn, part, None)  # type: ignore[assignment]
        if fn is None:
            raise ToolLoadError(f"tool '{tool.name}': module '{module_name}' has no '{function}'")
    if not callable(fn):
        raise ToolLoadError(f"tool '{tool.name}': '{tool.target}' is not callable")
    _loaded[tool.target] = fn
    return fn
