"""Worker specs that the daemon tests load with `up --worker cli_workers:ATTR` (PYTHONPATH=apps)."""

from __future__ import annotations

from workflows import Greet, greet

import stigmer_trio as st

spec = st.WorkerSpec("cli-q", workflows=[Greet], activities=[greet], graceful_shutdown_timeout=1.0)


def pair() -> list[st.WorkerSpec]:
    return [
        st.WorkerSpec("cli-a", workflows=[Greet], activities=[greet], graceful_shutdown_timeout=1.0),
        st.WorkerSpec("cli-b", workflows=[Greet], activities=[greet], graceful_shutdown_timeout=1.0),
    ]


not_a_spec = 42


def explodes() -> st.WorkerSpec:
    raise ValueError("configuration missing")
