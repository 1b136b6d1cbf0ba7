"""Build hook: the package metadata lives in pyproject.toml.

The hot-path Cython extensions in ``native/`` are added here when they exist; until then the
pure-Python twins are the only implementation and ``setup()`` builds a plain package.
"""
from setuptools import setup

setup()
