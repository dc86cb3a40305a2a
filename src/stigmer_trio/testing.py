# Public test helpers for programs that embed stigmer_trio, and the pytest plugin's entry point (the
# `pytest11` entry point names this module). Owns nothing itself: FaultProxy and open_fault_proxy live in
# _faultproxy, the fixtures and hooks in _testing_plugin (loaded by pytest through `pytest_plugins`).
# Rule: every pytest run in an environment with stigmer_trio installed imports this module, so it
# imports nothing at import time (no trio, temporalio, trio-asyncio, not even pytest): exports resolve
# lazily (module __getattr__). Must never be imported by the runtime's own modules.
"""Test helpers for programs that embed stigmer_trio: a fault-injecting TCP proxy, and a pytest plugin.

    async with open_fault_proxy("127.0.0.1:7233") as proxy:
        config = st.ConnectionConfig(address=proxy.address)
        ...
        proxy.reset()        # RST every current connection; new ones pass
        proxy.blackhole()    # swallow every byte both ways, until heal()
        proxy.latency(0.2)   # delay every chunk, until heal()
        proxy.heal()

The pytest plugin (registered as the `pytest11` entry point `stigmer_trio`, so it loads in every pytest
run of this environment; `-p no:stigmer_trio` turns it off) only defines fixtures, inert until a test
asks for one: `temporal_server`, `temporal_runtime` and `temporal_faults` (see _testing_plugin and
docs/testing.md). Importing this module imports nothing; FaultProxy and open_fault_proxy import trio
when first used.
"""

import importlib

TYPE_CHECKING = False  # not `from typing import`: this module must stay free to import
if TYPE_CHECKING:
    from typing import Any

    from ._faultproxy import FaultProxy, open_fault_proxy

__all__ = ["FaultProxy", "open_fault_proxy"]

# pytest registers the fixtures and hooks from here (this module is the entry point, the plugin is there).
pytest_plugins = ["stigmer_trio._testing_plugin"]

_EXPORTS = {"FaultProxy": "._faultproxy", "open_fault_proxy": "._faultproxy"}


def __getattr__(name: str) -> "Any":
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __package__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
