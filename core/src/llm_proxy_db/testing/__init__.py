"""The conformance suite every backend runs (needs the ``llm-proxy-db[testing]`` extra).

A backend's test module subclasses :class:`StoreConformance` and overrides the
``backend_factory`` fixture; see the class's docstring.
"""

from __future__ import annotations

import pytest

# The tests live in this installed package, not in the user's test files: ask pytest to
# rewrite their asserts too, so that a failure shows the compared values.
pytest.register_assert_rewrite(
    *(
        f"{__name__}.{module}"
        for module in (
            "_audit",
            "_base",
            "_calls",
            "_capabilities",
            "_conformance",
            "_failures",
            "_lifecycle",
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

from ._base import BackendFactory, pinned_clock, requires  # noqa: E402
from ._conformance import StoreConformance  # noqa: E402

__all__ = ["BackendFactory", "StoreConformance", "pinned_clock", "requires"]
