"""The conformance suite every backend runs (needs the ``llm-proxy-db[testing]`` extra).

A backend's test module subclasses :class:`StoreConformance` and overrides the
``backend_factory`` fixture, and :class:`AsyncStoreConformance` (the same suite on the
backend's ``AsyncDB``, plus async-only tests) overriding ``async_backend_factory``; see
the classes' docstrings.
"""

from __future__ import annotations

import pytest

# The tests live in this installed package, not in the user's test files: ask pytest to
# rewrite their asserts too, so that a failure shows the compared values.
pytest.register_assert_rewrite(
    *(
        f"{__name__}.{module}"
        for module in (
            "_async_conformance",
            "_async_only",
            "_audit",
            "_base",
            "_calls",
            "_capabilities",
            "_conformance",
            "_failures",
            "_lifecycle",
            "_portal",
            "_projects",
            "_races",
            "_reference",
            "_safety",
            "_stateful",
            "_tokens",
            "_usage",
        )
    )
)

from ._async_conformance import AsyncStoreConformance  # noqa: E402
from ._async_only import AsyncBackendFactory  # noqa: E402
from ._base import BackendFactory, pinned_clock, requires  # noqa: E402
from ._conformance import StoreConformance  # noqa: E402

__all__ = [
    "AsyncBackendFactory",
    "AsyncStoreConformance",
    "BackendFactory",
    "StoreConformance",
    "pinned_clock",
    "requires",
]
