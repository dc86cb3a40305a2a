# The state dir's layout: the one place that names its files. Rule: pure and stdlib only (the CLI's hot
# paths use it): it builds paths and touches nothing; creating, locking and reading the files is
# _boundary/_statefiles' job.
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["StateLayout", "default_state_dir"]


def default_state_dir(env: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/stigmer_trio, else ~/.local/state/stigmer_trio."""
    xdg = env.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "stigmer_trio"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "stigmer_trio"


class StateLayout:
    """Every file of one state dir.

    ``runtime.lock`` + ``runtime.json``: one daemon per state dir, and what it last said about itself.
    ``devserver.lock`` (held by the server through an inherited fd) + ``devserver.json``: the dev server.
    ``logs/``: ``daemon.log`` (the detached daemon) and ``devserver.log``. ``home/``: the server's HOME.
    ``temporal.db``: the server's SQLite db (unless configured elsewhere or in memory).
    ``outbox.db``: the durable start queue (with SQLite's ``-wal`` / ``-shm`` beside it).
    """

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"StateLayout({str(self.root)!r})"

    @property
    def runtime_lock(self) -> Path:
        return self.root / "runtime.lock"

    @property
    def runtime_record(self) -> Path:
        return self.root / "runtime.json"

    @property
    def devserver_lock(self) -> Path:
        return self.root / "devserver.lock"

    @property
    def devserver_record(self) -> Path:
        return self.root / "devserver.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def daemon_log(self) -> Path:
        return self.logs / "daemon.log"

    @property
    def devserver_log(self) -> Path:
        return self.logs / "devserver.log"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def db(self) -> Path:
        return self.root / "temporal.db"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox.db"
