"""The public API: pinned, so that a rename or an accidental export is a deliberate change."""

from __future__ import annotations

import pytest

import stigmer_trio

PUBLIC = [
    "ChildAbandoned",
    "ChildExited",
    "ChildRestartScheduled",
    "ChildSpec",
    "ChildStarted",
    "ChildState",
    "ChildStatus",
    "ConfigError",
    "ConnectionConfig",
    "ConnectionState",
    "ConnectionStateChanged",
    "DevServerConfig",
    "DevServerError",
    "Event",
    "EventHook",
    "FailFastRejected",
    "HealthChecked",
    "HttpConfig",
    "IdentityMismatch",
    "OutboxConfig",
    "OutboxCounted",
    "OutboxFull",
    "PortInUse",
    "Restart",
    "RestartLimitExceeded",
    "RestartPolicy",
    "RestartRecord",
    "Runtime",
    "RuntimeConfig",
    "ServerExited",
    "ServerListening",
    "ServerReady",
    "StateFileError",
    "StigmerError",
    "Strategy",
    "Submission",
    "SubmissionConflict",
    "SubmissionDelayed",
    "SubmissionFailed",
    "SubmissionRejected",
    "SubmissionStarted",
    "SubmissionState",
    "SubmissionsQueued",
    "Supervisor",
    "TemporalUnavailable",
    "TlsConfig",
    "WorkerSpec",
    "WorkerStateChanged",
    "WorkflowAlreadyStarted",
    "__version__",
    "open_runtime",
    "run",
]


class TestExports:
    def test_all_is_pinned(self) -> None:
        """__all__ lists exactly the public names."""
        assert PUBLIC == sorted(stigmer_trio.__all__)

    def test_every_name_resolves(self) -> None:
        """Every name in __all__ can be imported from the package."""
        for name in stigmer_trio.__all__:
            assert getattr(stigmer_trio, name) is not None

    def test_lazy_table_matches_all(self) -> None:
        """The lazy re-export table and __all__ agree (nothing exported that cannot be loaded)."""
        assert set(PUBLIC) - {"__version__"} == set(stigmer_trio._EXPORTS)

    def test_names_come_from_private_modules(self) -> None:
        """Public classes live in private modules; the package only re-exports them."""
        for name in set(PUBLIC) - {"__version__", "Event", "EventHook"}:  # the last two are type aliases
            value = getattr(stigmer_trio, name)
            module = value.__module__
            assert module.startswith("stigmer_trio._"), (name, module)

    def test_unknown_name(self) -> None:
        """An unknown attribute is an AttributeError naming it."""
        with pytest.raises(AttributeError, match="no_such_thing"):
            stigmer_trio.no_such_thing  # noqa: B018

    def test_errors_share_a_base(self) -> None:
        """Every error raised on purpose is a StigmerError."""
        for name in ("OutboxFull", "SubmissionConflict", "SubmissionFailed",
                     "ConfigError", "IdentityMismatch", "RestartLimitExceeded", "StateFileError",
                     "TemporalUnavailable", "WorkflowAlreadyStarted"):  # fmt: skip
            assert issubclass(getattr(stigmer_trio, name), stigmer_trio.StigmerError)

    def test_dir_lists_public_names(self) -> None:
        """dir() shows the lazy names too."""
        assert set(PUBLIC) <= set(dir(stigmer_trio))

    def test_testing_module_exports(self) -> None:
        """stigmer_trio.testing is public: its list is pinned, and `import stigmer_trio` does not load it."""
        import stigmer_trio.testing

        assert ["FaultProxy", "open_fault_proxy"] == stigmer_trio.testing.__all__
        assert "testing" not in stigmer_trio.__all__
