"""``StoreConformance``: the one class a backend's test module subclasses."""

from __future__ import annotations

from ._audit import AuditTests
from ._capabilities import CapabilityTests
from ._lifecycle import LifecycleTests
from ._projects import ProjectTests
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
    LifecycleTests,
    SafetyTests,
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
    """
