"""Bad input never crashes the CLI: whatever the TOML file, the STIGMER_TRIO_* environment and the flags
say, `main` exits 0, or 2 with one line on stderr, never a traceback, and exit 2 creates no state.

The property drives the real entry function in-process (`main(argv, env)`) through `up --check`, which
resolves exactly what `up` resolves (file, environment, flags, the state dir, --worker modules) and
stops before anything is created or started. The issue's examples also run through plain `up` (which
must refuse them before it creates anything), and a few through `python -m stigmer_trio`."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stigmer_trio._cli import _commands, main
from stigmer_trio._cli._main import one_line
from stigmer_trio._core._config import _DEV_KEYS, _FILE_KEYS, _OUTBOX_KEYS, _POLICY_KEYS

# A worker name the property may use: importing anything generated could run arbitrary modules.
SAFE_WORKERS = ("no_such_module_zz:spec", "no-colon", "", ",", ":")


def _would_start(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("the settings were accepted: `up` would start a daemon here")


def run_main(argv: list[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """`main(argv, env)` in this process: (exit code, stdout, stderr), argparse's SystemExit included.
    Starting a daemon (foreground or detached) is an AssertionError, never a real start."""
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.object(_commands, "_foreground", _would_start),
        mock.patch.object(_commands, "_detach", _would_start),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(argv, env)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, stderr: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    assert code in allowed, stderr
    assert "Traceback" not in stderr
    if code == 2:
        assert stderr.startswith("stigmer_trio: "), stderr
        assert 1 == stderr.count("\n"), stderr
        assert stderr.endswith("\n")


@contextlib.contextmanager
def scratch(base: Path) -> Iterator[Path]:
    """A fresh directory, also the current one (relative state dirs land here, if anywhere)."""
    work = Path(tempfile.mkdtemp(dir=base))
    before = os.getcwd()
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(before)


def snapshot(work: Path) -> set[Path]:
    return set(work.rglob("*"))


# --- TOML documents ------------------------------------------------------------------------------------
def toml(value: Any) -> str:
    """A TOML value (inline tables for tables); strings as JSON-escaped basic strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"


def document(table: Mapping[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml(v)}\n" for k, v in table.items())


text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
argv_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
interesting = st.sampled_from(
    ["127.0.0.1:0", "0", "off", "default", "ab\n", "a=b\n", "json", "1e308", "inf", "nan", "-1", "86401",
     "localhost:7233", "0.0.0.0:0", "~nosuchuser_zz/x", "1_0", "\uff17", "true", "false"]
)  # fmt: skip
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 4096, 86_400, 86_401, 65_535, 65_536, 2**63, 1e308, -0.0]),
)
scalar = st.one_of(st.booleans(), numbers, text, interesting)
value = st.one_of(scalar, st.lists(scalar, max_size=3))
safe_names = st.one_of(
    numbers, st.booleans(), text.filter(lambda t: ":" not in t), st.sampled_from(SAFE_WORKERS)
)
workers_value = st.one_of(safe_names, st.lists(safe_names, max_size=3))


def table(keys: tuple[str, ...], **special: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    key = st.sampled_from((*keys, "bogus_key"))
    plain = st.dictionaries(key, value, max_size=4)
    extra = st.fixed_dictionaries({}, optional=special)
    return st.builds(lambda a, b: {**a, **b}, plain, extra)


dev_table = table(_DEV_KEYS, restart=table(_POLICY_KEYS) | value)
file_keys = tuple(k for k in _FILE_KEYS if k not in ("workers", "dev_server", "outbox", "restart"))
documents = st.one_of(
    table(
        file_keys,
        dev_server=dev_table | value,
        outbox=table(_OUTBOX_KEYS) | value,
        restart=table(_POLICY_KEYS) | value,
        workers=workers_value,
    ).map(lambda t: document(t).encode()),
    st.binary(max_size=40),
    st.sampled_from([b"a = " + b"[" * 5000, b"\xef\xbb\xbfport = 1", b"[dev_server]\n[dev_server]\n"]),
)

# --- flags and environment -----------------------------------------------------------------------------
numeric_text = st.one_of(numbers.map(str), argv_text, interesting)
flag = st.one_of(
    st.tuples(
        st.sampled_from(["--port", "--ui-port", "--http-max-connections", "--start-timeout"]), numeric_text
    ),
    st.tuples(
        st.sampled_from(["--namespace", "--http", "--http-allow-host", "--log-format", "--external"]),
        st.one_of(argv_text, interesting),
    ),
    st.tuples(st.just("--worker"), st.sampled_from(SAFE_WORKERS)),
    st.tuples(st.sampled_from(["--in-memory", "--no-ui", "--no-demo", "--http-allow-remote", "--detach"])),
)
ENV_KEYS = (
    *(k for k in _DEV_KEYS if k not in ("binary", "db_filename")),
    "shutdown_timeout", "external", "demo_worker", "http", "http_allow_remote", "http_allow_hosts",
    "http_max_connections", "log_format", "log_max_bytes", "log_backups",
    *(f"outbox_{k}" for k in _OUTBOX_KEYS),
)  # fmt: skip
environment = st.one_of(
    st.dictionaries(
        st.sampled_from(ENV_KEYS).map(lambda k: f"STIGMER_TRIO_{k.upper()}"),
        st.one_of(argv_text, interesting, numbers.map(str)),
        max_size=4,
    ),
    st.fixed_dictionaries({"STIGMER_TRIO_WORKERS": st.sampled_from(SAFE_WORKERS)}),
)
# Where the state dir comes from, and what it says.
state_dirs = st.tuples(
    st.sampled_from(["flag", "env", "file", "default"]),
    st.one_of(st.sampled_from(["state", "c.toml", "~nosuchuser_zz/s", "a/../b", ""]), argv_text),
)

PROPERTY = settings(
    max_examples=250,
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class TestProperty:
    @PROPERTY
    @given(
        doc=documents,
        flags=st.lists(flag, max_size=4),
        env=environment,
        where=state_dirs,
        command=st.sampled_from(["up", "restart"]),
    )
    def test_exit_0_or_2_one_line_no_state(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        doc: bytes,
        flags: list[tuple[str, ...]],
        env: dict[str, str],
        where: tuple[str, str],
        command: str,
    ) -> None:
        """Any file, environment and flags: exit 0 or 2 (one line), no traceback, nothing created."""
        with scratch(tmp_path_factory.getbasetemp()) as work:
            config = work / "c.toml"
            source, state = where
            if source == "file":
                doc = f"state_dir = {json.dumps(state, ensure_ascii=False)}\n".encode() + doc
            config.write_bytes(doc)
            env = {**env, "HOME": str(work / "home")}
            argv = [command, "--check", "--config", str(config)]
            if source == "flag":
                argv += ["--state-dir", state]
            elif source == "env":
                env["STIGMER_TRIO_STATE_DIR"] = state
            argv += [part for pair in flags for part in pair]
            before = snapshot(work)
            code, _, stderr = run_main(argv, env)
            event(f"exit {code}")
            assert_clean(code, stderr)
            assert before == snapshot(work), "the check created something"

    @PROPERTY
    @given(timeout=st.one_of(numeric_text, st.sampled_from(["inf", "1e7", "nan", "-inf", "86400", "0"])))
    def test_stop_timeout(self, tmp_path_factory: pytest.TempPathFactory, timeout: str) -> None:
        """`stop --timeout X` (nothing running): exit 0, or 2 in one line for anything but 0-86400 s."""
        with scratch(tmp_path_factory.getbasetemp()) as work:
            code, _, stderr = run_main(["stop", "--state-dir", str(work / "s"), "--timeout", timeout], {})
            assert_clean(code, stderr)
            try:
                number = float(timeout)
            except ValueError:
                number = math.nan
            assert (0 if 0 <= number <= 86_400 else 2) == code
            assert [] == list(work.iterdir())


# The issue's examples, each through plain `up` (it must refuse before creating anything).
BAD_FILES = {
    "not UTF-8": (b"\xff\xfe = 1\n", "is not UTF-8 text"),
    "workers int": (b"workers = 5\n", "workers must be a list of 'MODULE:ATTR' strings, got 5"),
    "workers list of int": (b"workers = [1]\n", "workers must be a list of 'MODULE:ATTR' strings, got [1]"),
    "allow_remote string": (
        b'http = "0.0.0.0:0"\nhttp_allow_remote = "false"\n',
        "http_allow_remote must be true or false, got 'false'",
    ),
    "namespace newline": (b'[dev_server]\nnamespaces = ["ab\\n"]\n', "namespace must be 2-255"),
    "dynamic config newline": (b'[dev_server]\ndynamic_config = ["a=b\\n"]\n', "dynamic_config must be"),
    "stop_timeout 1e308": (
        b"[dev_server]\nstop_timeout = 1e308\n",
        "stop_timeout must be a number of seconds",
    ),
    "retain inf": (b"[outbox]\nretain = inf\n", "retain must be a number of seconds > 0, got inf"),
    "state_dir NUL": (b'state_dir = "a\\u0000b"\n', "state_dir must be a path, got 'a\\x00b'"),
    "nested deep": (b"a = " + b"[" * 5000, "nests its arrays or tables too deeply"),
}


class TestIssueExamples:
    @pytest.mark.parametrize("name", sorted(BAD_FILES))
    def test_up_refuses_bad_file(self, tmp_path: Path, name: str) -> None:
        """Each example is exit 2 with one line naming the field and value; no state dir."""
        content, needle = BAD_FILES[name]
        config = tmp_path / "c.toml"
        config.write_bytes(content)
        code, _, stderr = run_main(["up", "--config", str(config)], {"HOME": str(tmp_path / "home")})
        assert_clean(code, stderr, allowed=(2,))
        assert needle in stderr
        assert [config] == list(tmp_path.iterdir())

    @pytest.mark.parametrize(
        "argv",
        [
            ["stop", "--timeout", "inf"],
            ["stop", "--timeout", "1e7"],
            ["stop", "--timeout", "nan"],
            ["up", "--start-timeout", "1e308"],
            ["submit", "T", "--id", "i", "--task-queue", "q", "--timeout", "inf"],
            ["logs", "-n", str(10**30)],
            ["queue", "--limit", str(10**30)],
        ],
    )
    def test_numbers_out_of_range_are_usage_errors(self, tmp_path: Path, argv: list[str]) -> None:
        """Infinite, NaN or huge numbers on the command line: exit 2 before anything runs (stop used
        to send SIGTERM, then die of OverflowError before its SIGKILL fallback)."""
        state = tmp_path / "state"
        code, _, stderr = run_main([*argv, "--state-dir", str(state)], {})
        assert_clean(code, stderr, allowed=(2,))
        assert "at most" in stderr
        assert not state.exists()

    def test_environment_values_are_type_checked(self, tmp_path: Path) -> None:
        """A STIGMER_TRIO_* value of the wrong kind is the same one-line exit 2."""
        env = {"STIGMER_TRIO_STATE_DIR": str(tmp_path / "s"), "STIGMER_TRIO_STOP_TIMEOUT": "1e308"}
        code, _, stderr = run_main(["up"], env)
        assert_clean(code, stderr, allowed=(2,))
        assert "stop_timeout must be a number of seconds >= 0, got 1e+308" in stderr

    def test_error_stays_one_line(self, tmp_path: Path) -> None:
        """A value with a line break cannot split the error in two (argparse quotes argv raw)."""
        code, _, stderr = run_main(["status", "--state-dir", str(tmp_path), "x\ny"], {})
        assert_clean(code, stderr, allowed=(2,))
        assert "x\\ny" in stderr
        assert "a\\x1b[2Jb" == one_line("a\x1b[2Jb")

    def test_check_resolves_and_creates_nothing(self, tmp_path: Path) -> None:
        """`up --check` with good settings: exit 0, the state dir named, nothing created."""
        state = tmp_path / "state"
        code, stdout, stderr = run_main(["up", "--check", "--state-dir", str(state), "--port", "7300"], {})
        assert (0, "") == (code, stderr)
        assert f"settings OK: state dir {state}\n" == stdout
        assert not state.exists()


@pytest.mark.parametrize(
    ("argv", "content"),
    [
        (["up", "--config", "c.toml"], b"\xff\xfe = 1\n"),
        (["up", "--config", "c.toml"], b"workers = 5\n"),
        (["up", "--config", "c.toml"], b"[dev_server]\nstop_timeout = 1e308\n"),
        (["stop", "--timeout", "inf"], b""),
    ],
)
def test_real_entry_point(tmp_path: Path, argv: list[str], content: bytes) -> None:
    """`python -m stigmer_trio`: exit 2, one stderr line, no traceback, no state dir."""
    (tmp_path / "c.toml").write_bytes(content)
    state = tmp_path / "state"
    env = {**os.environ, "STIGMER_TRIO_STATE_DIR": str(state)}
    result = subprocess.run(
        [sys.executable, "-m", "stigmer_trio", *argv], cwd=tmp_path, env=env, capture_output=True, timeout=60
    )
    assert_clean(result.returncode, result.stderr.decode(), allowed=(2,))
    assert not state.exists()
