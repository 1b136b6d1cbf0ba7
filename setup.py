"""Build hook: compiles the Cython hot path in ``native/`` into ``dspex.native`` (metadata is in pyproject.toml).

Each ``native/*_c.pyx`` has a pure-Python twin (``*_py.py``) with the same API and messages, so the
extensions are an optimisation, never a requirement: when no C compiler is present (or
``DSPEX_NO_EXTENSIONS=1`` is set at build time) the install still succeeds, says so once, and
``dspex.native`` selects the twins at import. The pattern is msgpack-python's and aio-libs'.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
NATIVE = HERE / "native"
NO_EXTENSIONS = bool(os.environ.get("DSPEX_NO_EXTENSIONS"))
FALLBACK_NOTE = ("dspex: the compiled hot path could not be built ({why}); "
                 "installing with the pure-Python twins (same behaviour, slower).")


class OptionalBuildExt(build_ext):
    """``build_ext`` that turns a missing compiler or a failed compile into one note instead of a failed install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # setuptools raises several unrelated types for "no compiler"
            self._fallback(e)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            self._fallback(e)

    _noted = False

    def _fallback(self, error: BaseException) -> None:
        if not OptionalBuildExt._noted:
            OptionalBuildExt._noted = True
            print(FALLBACK_NOTE.format(why=f"{type(error).__name__}: {error}"), file=sys.stderr)


def extensions() -> list[Extension]:
    """One extension per ``native/*_c.pyx``, cythonized here so that an install needs no pre-generated C."""
    sources = sorted(NATIVE.glob("*_c.pyx"))
    if NO_EXTENSIONS or not sources:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as e:  # only when installing without build isolation and without Cython
        print(FALLBACK_NOTE.format(why=e), file=sys.stderr)
        return []
    modules = [Extension(f"dspex.native.{src.stem}", [str(src.relative_to(HERE))], include_dirs=[str(NATIVE)],
                         extra_compile_args=["-O3"]) for src in sources]
    return cythonize(modules, language_level=3, quiet=True,
                     compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                                          "embedsignature": True})


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
