"""Self-checks of the conformance suite: it catches broken backends and skips what is optional.

Each check writes a small test module that registers a backend in code (a subclass of the
memory backend, broken on purpose, or declaring no capabilities) and runs
``StoreConformance`` against it in a nested pytest run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llm_proxy_db import unregister_backend
from llm_proxy_db.testing import StoreConformance
from llm_proxy_db.testing._base import required_capabilities

pytest_plugins = ["pytester"]

_INNER_OPTIONS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")

# The backends under test, registered when the inner module is imported. They use only
# the public API of the memory backend, so they do not depend on its internals.
_HEADER = '''
import attrs
import pytest
from hypothesis import Phase, settings

from llm_proxy_db import (
    STORAGE_API_VERSION, BackendSpec, Capabilities, FullConfig, new_from_full_config,
    register_backend,
)
from llm_proxy_db.testing import StoreConformance
from llm_proxy_db_memory import MemoryBackend


class ExpiryBlindBackend(MemoryBackend):
    """Counts requests of expired tokens: increment_token_usage ignores expires_at."""

    def increment_token_usage(self, token):
        stored = self.get_token_by_id(token)
        if stored.expires_at is None:
            return super().increment_token_usage(token)
        self.update_token(attrs.evolve(stored, expires_at=None))
        try:
            updated = super().increment_token_usage(token)
        finally:
            now = self.get_token_by_id(token)
            self.update_token(attrs.evolve(now, expires_at=stored.expires_at))
        return attrs.evolve(updated, expires_at=stored.expires_at)


class UnorderedBackend(MemoryBackend):
    """list_projects in reverse name order instead of by name."""

    def list_projects(self):
        return list(reversed(super().list_projects()))


BACKENDS = {
    "selfcheck-expiry-blind": ExpiryBlindBackend,
    "selfcheck-unordered": UnorderedBackend,
    "selfcheck-bare": MemoryBackend,
}
for _name, _cls in BACKENDS.items():
    register_backend(
        BackendSpec(
            name=_name,
            api_version=STORAGE_API_VERSION,
            factory=lambda config, cls=_cls: cls(),
            capabilities=Capabilities(),
            description="conformance suite self-check",
        ),
        replace=True,
    )


def factory_for(name):
    def factory(*, reopen=None):
        return new_from_full_config(FullConfig(driver=name))

    return factory
'''

_SUITE = """

class Test{cls}(StoreConformance):
    # No example database (nothing is replayed from earlier runs) and no shrinking: the
    # first failing sequence is enough here, and shrinking one takes minutes. More examples
    # than the default, so that a miss is out of the question; that costs little, as a
    # run stops at its first failure.
    stateful_settings = settings(
        StoreConformance.stateful_settings,
        database=None,
        max_examples=300,
        phases=[Phase.explicit, Phase.generate],
    )

    @pytest.fixture
    def backend_factory(self):
        return factory_for("{name}")
"""


@pytest.fixture
def registered_cleanup() -> Iterator[None]:
    """The inner run registers its backends in this process's registry: remove them."""
    yield
    for name in ("selfcheck-expiry-blind", "selfcheck-unordered", "selfcheck-bare"):
        unregister_backend(name)


def _module(cls: str, name: str) -> str:
    return _HEADER + _SUITE.format(cls=cls, name=name)


def _name(report: pytest.TestReport) -> str:
    return report.nodeid.rsplit("::", 1)[-1]


def _run(
    pytester: pytest.Pytester, *args: str
) -> tuple[dict[str, pytest.TestReport], list[pytest.TestReport], list[pytest.TestReport]]:
    """Run the inner suite; its failed reports by test name, and the passed and skipped."""
    recorder = pytester.inline_run(*_INNER_OPTIONS, *args)
    passed, skipped, failed = recorder.listoutcomes()
    failures = {_name(r): r for r in failed if isinstance(r, pytest.TestReport)}
    assert len(failures) == len(failed), "the inner module failed to collect"
    return failures, list(passed), [r for r in skipped if isinstance(r, pytest.TestReport)]


@pytest.mark.usefixtures("registered_cleanup")
def test_increment_ignoring_expiry_is_caught(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=_module("ExpiryBlind", "selfcheck-expiry-blind"))
    failed, passed, _ = _run(pytester, "-k", "expir or refusal_order or random_operations")
    assert {
        "test_increment_expired_by_one_millisecond",
        "test_increment_expiring_now_is_expired",
        "test_increment_refusal_order",
        "test_random_operations_match_reference_model",
    } <= set(failed)
    # Tests that increment no expired token are unaffected.
    passed_names = {_name(r) for r in passed}
    assert {"test_revoke_expired_tokens", "test_increment_not_yet_expired"} <= passed_names
    # The model-based test names the refusal the backend did not make.
    report = failed["test_random_operations_match_reference_model"].longreprtext
    assert "increment_token_usage: expected TokenExpiredError" in report, report


@pytest.mark.usefixtures("registered_cleanup")
def test_unordered_project_list_is_caught(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=_module("Unordered", "selfcheck-unordered"))
    failed, passed, _ = _run(pytester, "-k", "list_projects or random_operations or project")
    assert {
        "test_list_projects_orders_by_name",
        "test_list_projects_returns_stored_values",
        "test_random_operations_match_reference_model",
    } <= set(failed)
    report = failed["test_random_operations_match_reference_model"].longreprtext
    assert "list_projects" in report and "the model has" in report, report
    assert len(passed) >= 5  # the rest of the selection is unaffected


def _optional_tests() -> dict[str, tuple[str, ...]]:
    """The suite's tests that need a capability, and which."""
    found: dict[str, tuple[str, ...]] = {}
    for name in dir(StoreConformance):
        if name.startswith("test_"):
            needed = required_capabilities(getattr(StoreConformance, name))
            if needed:
                found[name] = needed
    return found


@pytest.mark.usefixtures("registered_cleanup")
def test_backend_without_capabilities_skips_optional_tests(pytester: pytest.Pytester) -> None:
    optional = _optional_tests()
    assert optional, "the suite has no capability-dependent tests to check"
    pytester.makepyfile(test_bare=_module("Bare", "selfcheck-bare"))
    # Everything but the (slow, and separately checked) model-based test.
    failed, passed, skipped = _run(pytester, "-k", "not random_operations")
    assert not failed, "\n\n".join(r.longreprtext for r in failed.values())
    assert len(passed) >= 100, len(passed)
    assert {_name(r) for r in skipped} == set(optional)
    for report in skipped:
        needed = optional[_name(report)]
        reason = str(report.longrepr)
        assert "backend 'selfcheck-bare' lacks the capability" in reason, reason
        assert all(repr(capability) in reason for capability in needed), reason
