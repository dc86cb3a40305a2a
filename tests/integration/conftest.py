"""Fixtures shared by the integration tests that drive a real daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Stack, free_port


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A state dir (not created yet) and a free port; at teardown nothing of ours is left running."""
    stack = Stack(tmp_path / "state", free_port())
    try:
        yield stack
    finally:
        stack.cleanup()
