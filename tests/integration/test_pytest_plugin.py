"""The pytest plugin (stigmer_trio.testing, entry point `stigmer_trio`): user test files run by pytester in
a pytest subprocess against the real binary (a Worker runs in that child, never here).

Each run is judged by its outcomes, its exit status and a probe: the inner conftest registers an atexit
handler that prints a line, which a hard exit (os._exit after a session in which a Worker ran) skips.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from children import leftovers

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN_TIMEOUT = 180.0
PROBE = "PROBE: atexit ran"
INI = """\
[pytest]
trio_mode = true
timeout = 120
filterwarnings = error
"""
CONFTEST = f"""\
import atexit
import os

atexit.register(lambda: os.write(1, b"\\n{PROBE}\\n"))
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user's project: trio mode, warnings as errors, the atexit probe."""
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest in a subprocess; fail if it left any process behind."""
    try:
        return pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT)
    finally:
        assert [] == leftovers(pytester.path)


def servers_started(pytester: pytest.Pytester) -> int:
    return len(list(pytester.path.glob("runpytest-[0-9]*/temporal_server[0-9]*")))


def test_import_is_cheap() -> None:
    """`import stigmer_trio.testing` (every pytest run does it) loads neither trio, temporalio, trio-asyncio
    nor pytest; FaultProxy still resolves, on first use."""
    code = (
        "import sys, stigmer_trio.testing as t\n"
        "heavy = ('trio', 'temporalio', 'trio_asyncio', 'pytest', 'attrs', 'psutil')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(t.FaultProxy.__name__, t.open_fault_proxy.__name__, 'trio' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert ["[]", "FaultProxy open_fault_proxy True"] == result.stdout.splitlines()


def test_entry_point() -> None:
    """The plugin is registered as the pytest11 entry point `stigmer_trio`."""
    (entry,) = importlib.metadata.entry_points(group="pytest11", name="stigmer_trio")
    assert "stigmer_trio.testing" == entry.value


def test_inert_when_unused(project: pytest.Pytester) -> None:
    """A session that uses none of the fixtures starts nothing and exits as pytest decides (no hard exit);
    the fixtures are listed."""
    project.makepyfile(
        test_plain="""
        def test_passes():
            pass

        def test_fails():
            assert False
        """
    )
    result = run(project)
    result.assert_outcomes(passed=1, failed=1)
    assert 1 == result.ret
    assert PROBE in result.stdout.str()
    assert 0 == servers_started(project)
    listing = run(project, "--fixtures").stdout.str()
    for name in ("temporal_server [session scope]", "temporal_runtime", "temporal_faults"):
        assert name in listing


def test_example_survives_server_kill(project: pytest.Pytester) -> None:
    """examples/test_survives_server_kill.py passes: exit 0 after a Worker ran (a hard exit: the probe is
    skipped), with the junitxml report complete."""
    for name in ("test_survives_server_kill.py", "charge_workflow.py"):
        shutil.copy(EXAMPLES / name, project.path / name)
    result = run(project, "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    assert 0 == result.ret
    assert PROBE not in result.stdout.str()
    suite = ET.parse(project.path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert ("1", "0", "0") == (suite.get("tests"), suite.get("failures"), suite.get("errors"))


FAULTS = """
import psutil
import pytest
import trio
from temporalio import activity

import stigmer_trio as st


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def state_becomes(rt, state):
    with trio.fail_after(15):
        while rt.state is not state:
            await trio.sleep(0.02)


@activity.defn
async def noop() -> None:
    pass


def test_queue_a(temporal_server, temporal_runtime, request):
    with open("queues.txt", "a") as file:
        file.write(f"{temporal_server} {temporal_runtime.task_queue}\\n")


def test_queue_b(temporal_server, temporal_runtime):
    with open("queues.txt", "a") as file:
        file.write(f"{temporal_server} {temporal_runtime.task_queue}\\n")


async def test_faults(temporal_runtime, temporal_faults):
    async with temporal_runtime() as rt:
        assert rt.state is st.ConnectionState.CONNECTED
        first = await temporal_faults.wait_server_ready()

        killed = await temporal_faults.kill_server()
        assert first == killed and gone(killed)
        second = await temporal_faults.wait_server_ready()
        assert second != killed
        await state_becomes(rt, st.ConnectionState.CONNECTED)

        with pytest.raises(st.ConfigError, match="seconds must be a finite number >= 0, got -1"):
            await temporal_faults.freeze_server(-1)
        assert second == await temporal_faults.wait_server_ready()  # refused: nothing was signalled

        frozen = await temporal_faults.freeze_server(0.3)
        assert second == frozen
        assert psutil.STATUS_STOPPED == psutil.Process(frozen).status()
        await trio.sleep(0.6)
        assert psutil.STATUS_STOPPED != psutil.Process(frozen).status()  # thawed: the same server again
        assert frozen == await temporal_faults.wait_server_ready()

        third = await temporal_faults.restart_server()
        assert third != second and gone(second)
        await state_becomes(rt, st.ConnectionState.CONNECTED)

        await temporal_faults.cut_network()
        await state_becomes(rt, st.ConnectionState.DISCONNECTED)
        assert third == await temporal_faults.wait_server_ready()  # the server itself is fine
        await temporal_faults.heal_network()
        await state_becomes(rt, st.ConnectionState.CONNECTED)


async def test_fails_with_worker(temporal_runtime):
    async with temporal_runtime(activities=[noop]):
        pass
    assert False, "on purpose"
"""


def test_fixtures_and_faults(project: pytest.Pytester) -> None:
    """One server for the session, a task queue per test, every fault in place when its call returns;
    a failed session that ran a Worker exits 1 (hard exit)."""
    project.makepyfile(test_faults=FAULTS)
    result = run(project)
    result.assert_outcomes(passed=3, failed=1)
    assert 1 == result.ret
    assert PROBE not in result.stdout.str()
    assert 1 == servers_started(project)
    lines = [line.split() for line in (project.path / "queues.txt").read_text().splitlines()]
    (address_a, queue_a), (address_b, queue_b) = lines
    assert address_a == address_b
    assert queue_a != queue_b
    assert "test_queue_a" in queue_a
    assert "test_queue_b" in queue_b


def test_hard_exit_opt_out(project: pytest.Pytester) -> None:
    """`stigmer_trio_hard_exit = false` leaves the interpreter's own exit (the probe runs)."""
    project.makepyfile(
        test_worker="""
        from temporalio import activity

        @activity.defn
        async def noop() -> None:
            pass

        async def test_worker(temporal_runtime):
            async with temporal_runtime(activities=[noop]):
                pass
        """
    )
    result = run(project, "-o", "stigmer_trio_hard_exit=false")
    result.assert_outcomes(passed=1)
    assert PROBE in result.stdout.str()
