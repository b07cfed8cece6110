"""The ``llm-proxy-db`` command line: the operator's projects, tokens, audit log and schema.

A client of the ``DB`` facade like any other; it never touches a backend directly. The
console script calls :func:`main`; ``python -m llm_proxy_db.cli`` does the same.
"""

from __future__ import annotations

from ._app import main

__all__ = ["main"]
