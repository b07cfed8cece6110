"""``StoreConformance``: the one class a backend's test module subclasses."""

from __future__ import annotations

from ._audit import AuditTests
from ._capabilities import CapabilityTests
from ._failures import FailureTests
from ._inputs import InputTests
from ._lifecycle import LifecycleTests
from ._projects import ProjectTests
from ._request_path import RequestPathTests
from ._safety import SafetyTests
from ._stateful import StatefulTests
from ._tokens import TokenTests
from ._usage import UsageTests

__all__ = ["StoreConformance"]


class StoreConformance(
    ProjectTests,
    TokenTests,
    UsageTests,
    AuditTests,
    RequestPathTests,
    LifecycleTests,
    SafetyTests,
    FailureTests,
    InputTests,
    CapabilityTests,
    StatefulTests,
):
    """Every behaviour of the store contract, for one backend.

    Subclass it in a module named ``test_*.py`` under a name starting with ``Test`` and
    override one fixture, ``backend_factory``, returning a :class:`BackendFactory`::

        class TestMyBackend(StoreConformance):
            @pytest.fixture
            def backend_factory(self, tmp_path):
                def factory(*, reopen=None):
                    if reopen is not None:  # the same storage, opened again
                        return new_from_full_config(reopen.config)
                    path = tmp_path / f"db-{uuid.uuid4().hex}"  # a new, empty one
                    return new_from_full_config(FullConfig(driver="mine", path=str(path)))
                return factory

    Tests needing an optional capability (``persistent``, ``multi_process``,
    ``migrations``) skip with a visible reason when the backend does not declare it.
    Known bugs go in ``expected_failures`` (test name -> reason) and run as strict xfails.

    The suite tests the backend, not the ``DB`` facade: argument checks and the closed
    state are the facade's (tested with the core), while a few tests drive the backend
    object itself (its second ``close()``, ``health_check()`` after ``close()``, the
    stores its ``transaction()`` yields).

    **A failing storage.** ``test_failing_storage_raises_only_database_errors`` and
    ``test_database_recovers_after_storage_failure`` use the ``failing_storage`` fixture:
    a context manager (for the test's ``db``) within which the backend's storage fails.
    The suite then calls every store method, ``health_check()`` and ``transaction()``:
    each must raise a ``llm_proxy_db.DatabaseError`` (reads may also answer, say from a
    cache; a write may not claim success), never a driver's exception or anything else;
    and after the block the database works again. By default, for a backend with the
    ``migrations`` capability, the fixture renames the tables ``projects``, ``tokens`` and
    ``audit_events`` on a connection of the backend's ``migration_connection()`` and
    renames them back afterwards; for other backends these two tests skip, saying so,
    unless the subclass overrides the fixture, e.g.::

            @pytest.fixture
            def failing_storage(self, db):
                return unplug_my_server(db.config)  # a context manager

    **Time.** Backends take every "now" from ``llm_proxy_db.utcnow()``: the expiry tests
    pin that clock (``llm_proxy_db.testing.pinned_clock``) to put ``expires_at`` exactly at
    now. A backend whose clock is a server's sets ``clock_tolerance``.

    **Processes.** The ``multi_process`` tests race spawned processes that open
    ``new_from_full_config(db.config)``: increments at an exact limit, creating projects
    of one name, deleting a project while tokens are created for it, ``update_token``
    against ``revoke_token`` and increments. A spawned process finds backends by entry
    point; for one registered in code, list the module that registers it in the class
    attribute ``spawn_imports``.
    """
