# The parser and the dispatch: which command runs with which settings. Rule: stdlib only at import; a
# command's handler lives in _commands, its settings come from _settings.
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Mapping, Sequence

from .._version import __version__
from . import _commands  # _queue and _systemd are imported by their commands: not on every command's path
from ._common import EXIT_OK, EXIT_USAGE, LIST_LIMIT, PROG, UsageError, say
from ._settings import Settings, full_config, load_toml, resolve_state_dir

TYPE_CHECKING = False  # typing is not imported at run time: the hot paths stay lean
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

__all__ = ["build_parser", "main"]

MAX_SECONDS = 86_400.0  # every duration flag: finite and at most a day (as in _core/_config)
MAX_COUNT = 1_000_000_000  # --lines, --limit


def one_line(text: str) -> str:
    """`text` with its line breaks and other control characters escaped: an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        flag, sep, rest = message.removeprefix("argument ").partition(": ")
        if sep and rest.startswith(f"{flag.split('/')[-1]} "):  # our types name their flag: say it once
            message = rest
        self.exit(EXIT_USAGE, f"{PROG}: error: {one_line(message)} (see '{PROG} --help')\n")


def _seconds(flag: str, *, positive: bool) -> Callable[[str], float]:
    """An argparse type for `flag`: a finite number of seconds, > 0 (or >= 0) and at most a day."""
    bound = "> 0" if positive else ">= 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS or (positive and value == 0):
            raise argparse.ArgumentTypeError(
                f"{flag} must be a number of seconds {bound}, got {text!r} (at most {MAX_SECONDS:.0f}: 1 day)"
            )
        return value

    return parse


def _whole(flag: str) -> Callable[[str], int]:
    """An argparse type for `flag`: a whole number from 0 to MAX_COUNT."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not 0 <= value <= MAX_COUNT:
            raise argparse.ArgumentTypeError(
                f"{flag} must be >= 0, got {text!r} (a whole number, at most {MAX_COUNT})"
            )
        return value

    return parse


def _add_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (flags > environment > file)")
    parser.add_argument("--state-dir", metavar="DIR", help="lock, pid, db and log files (default: XDG state)")


def _add_up_options(parser: argparse.ArgumentParser) -> None:
    """The options of `up` (and `restart`). Each reaches a detached daemon by itself (_settings.Settings
    carries every dest); resolving one into the RuntimeConfig is _core/_config.resolve's job."""
    _add_location(parser)
    parser.add_argument("--detach", action="store_true", help="run the daemon in the background")
    parser.add_argument("--port", type=int, metavar="N", help="dev server gRPC port on 127.0.0.1 (7233)")
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="namespace to create (repeatable)",
    )
    parser.add_argument("--binary", metavar="PATH", help="the temporal executable (default: next to python)")
    parser.add_argument(
        "--start-timeout",
        type=_seconds("--start-timeout", positive=True),
        metavar="S",
        help="seconds a server may take to be ready (15; at most a day)",
    )
    parser.add_argument(
        "--in-memory",
        action="store_const",
        const=False,
        dest="persist",
        help="no db file: state dies with it",
    )
    parser.add_argument(
        "--ui-port",
        type=int,
        metavar="N",
        help="the dev server's Web UI on 127.0.0.1:N (default: --port + 1000, 8233; 0: a free port)",
    )
    parser.add_argument(
        "--no-ui", action="store_const", const=False, dest="ui", help="no Web UI (a headless dev server)"
    )
    parser.add_argument(
        "--external",
        nargs="?",
        const=True,
        metavar="HOST:PORT",
        help="no dev server: connect to this Temporal (scale out: many runtimes, one task queue); without "
        "HOST:PORT, the address of --profile / TEMPORAL_ADDRESS",
    )
    _add_connection_options(parser)
    parser.add_argument(
        "--worker",
        action="append",
        dest="workers",
        metavar="MODULE:ATTR",
        help="a WorkerSpec, or a zero-argument callable returning one or a list (repeatable)",
    )
    parser.add_argument(
        "--no-demo", action="store_const", const=False, dest="demo_worker", help="no built-in demo worker"
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT|off",
        help="control endpoint /healthz /readyz /status /metrics (default 127.0.0.1, a free port)",
    )
    parser.add_argument(
        "--http-allow-remote",
        action="store_const",
        const=True,
        dest="http_allow_remote",
        help="allow --http on a non-loopback address (the endpoint has no authentication)",
    )
    parser.add_argument(
        "--http-allow-host",
        action="append",
        dest="http_allow_hosts",
        metavar="HOST",
        help="also answer requests whose Host header is HOST or HOST:PORT (repeatable; e.g. a pod IP)",
    )
    parser.add_argument(
        "--http-max-connections",
        type=int,
        metavar="N",
        help="connections the control endpoint serves at once (64)",
    )
    parser.add_argument("--log-format", choices=("text", "json"), help="daemon log lines (text)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only validate the settings (file, environment, flags, --worker modules): exit 0 or 2; "
        "starts, stops and creates nothing",
    )


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    """With --external: TLS, the API key (a file: never a key on the command line) and the Temporal
    SDK's environment profile (TEMPORAL_* variables, temporal.toml), which ours override."""
    parser.add_argument(
        "--profile", metavar="NAME", help="with --external: this temporal.toml profile (TEMPORAL_PROFILE)"
    )
    parser.add_argument(
        "--tls", action="store_const", const=True, help="with --external: TLS with the system roots"
    )
    parser.add_argument("--tls-ca", metavar="FILE", help="with --external: verify the server with this CA")
    parser.add_argument("--tls-cert", metavar="FILE", help="with --external: client certificate (mTLS)")
    parser.add_argument(
        "--tls-key", metavar="FILE", help="with --external: its private key (refused if others can read it)"
    )
    parser.add_argument(
        "--tls-server-name", metavar="NAME", help="with --external: the name on the server's certificate"
    )
    parser.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="with --external: the API key, read at each connect (mode 600; turns TLS on)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Keep a Temporal stack alive: a supervised, persistent local Temporal dev server under one "
            "Trio supervision tree."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_up_options(commands.add_parser("up", help="start the runtime (foreground unless --detach)"))
    stop = commands.add_parser("stop", help="stop the runtime and its dev server")
    _add_location(stop)
    stop.add_argument(
        "--timeout",
        type=_seconds("--timeout", positive=False),
        default=15.0,
        metavar="S",
        help="graceful stop budget (15)",
    )
    restart = commands.add_parser("restart", help="stop, then start the runtime in the background")
    _add_up_options(restart)
    demo = commands.add_parser("demo", help="run the built-in demo workflow through the daemon's worker")
    _add_location(demo)
    demo.add_argument("--name", default="stigmer", help="who to greet")
    status = commands.add_parser("status", help="is the runtime running and ready? (exit 0 / 1 / 3)")
    _add_location(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    logs = commands.add_parser("logs", help="print the daemon's log (logs/daemon.log) or the dev server's")
    _add_location(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended")
    logs.add_argument("--devserver", action="store_true", help="the dev server's log instead")
    logs.add_argument("-n", "--lines", type=_whole("--lines"), metavar="N", help="only the last N lines")
    submit = commands.add_parser(
        "submit", help="queue a workflow start: durable now, started when Temporal is up (exactly once)"
    )
    _add_location(submit)
    submit.add_argument("workflow_type", metavar="WORKFLOW_TYPE", help="the workflow type name")
    submit.add_argument("--id", required=True, help="the workflow id: the idempotency key")
    submit.add_argument("--task-queue", required=True, metavar="Q", help="the task queue")
    submit.add_argument(
        "--input",
        action="append",
        default=[],
        dest="inputs",
        metavar="JSON",
        help="one argument (repeatable)",
    )
    submit.add_argument("--wait", action="store_true", help="wait until started; print `started ID RUN_ID`")
    submit.add_argument(
        "--timeout",
        type=_seconds("--timeout", positive=True),
        metavar="S",
        help="with --wait: give up waiting after S s",
    )
    queue = commands.add_parser("queue", help="the queued starts: list, `queue retry ID`, `queue drop ID`")
    _add_location(queue)
    queue.add_argument("action", nargs="?", choices=("retry", "drop"), help="retry a failed entry, drop one")
    queue.add_argument("id", nargs="?", metavar="ID", help="the entry's workflow id")
    queue.add_argument("--json", action="store_true", help="one JSON object: counts and entries")
    queue.add_argument("--state", choices=("pending", "failed", "started"), help="only entries in this state")
    queue.add_argument(
        "--limit", type=_whole("--limit"), default=LIST_LIMIT, metavar="N", help="at most N entries"
    )
    unit = commands.add_parser(
        "systemd-unit", help="print a systemd unit that runs `up` as a Type=notify service (with a watchdog)"
    )
    _add_location(unit)
    unit.add_argument(
        "--user",
        action="store_true",
        help="a user unit (systemctl --user; WantedBy=default.target) instead of a system unit run as you",
    )
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``python -m stigmer_trio`` and the ``stigmer-trio`` script; returns the exit code.
    `argv` and `env` default to the process's (tests pass their own)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "up" and (handover := _commands.detach_handover()) is not None:
            return _commands.detached_daemon(handover)  # a daemon `up --detach` started: settings handed
        file = load_toml(args.config)
        state_dir = resolve_state_dir(args.state_dir, env, file)
        if args.command == "systemd-unit":
            from . import _systemd

            return _systemd.systemd_unit(state_dir, args.config, env, file, user_unit=args.user)
        if getattr(args, "check", False):  # up/restart --check: resolve everything, touch nothing
            config = full_config(Settings.gather(args, env, file, state_dir), create=False)
            print(f"settings OK: state dir {config.state_dir}")
            return EXIT_OK
        if args.command in ("submit", "queue"):
            from . import _queue
        if args.command == "submit":
            return _queue.submit(
                state_dir,
                env,
                file,
                workflow_type=args.workflow_type,
                id=args.id,
                task_queue=args.task_queue,
                inputs=args.inputs,
                wait=args.wait,
                timeout=args.timeout,
            )
        if args.command == "queue":
            return _queue.queue(
                state_dir,
                action=args.action,
                id=args.id,
                as_json=args.json,
                state=args.state,
                limit=args.limit,
            )
        if args.command == "status":
            return _commands.status(state_dir, as_json=args.json)
        if args.command == "demo":
            return _commands.demo(state_dir, args.name)
        if args.command == "logs":
            return _commands.logs(state_dir, lines=args.lines, follow=args.follow, devserver=args.devserver)
        if args.command == "stop":
            return _commands.stop(state_dir, args.timeout)
        if (args.command == "restart" or args.detach) and env.get("NOTIFY_SOCKET"):
            # systemd waits for READY=1 from the process it started, which `--detach` leaves at once
            which = "restart" if args.command == "restart" else "--detach"
            raise UsageError(
                f"{which}: NOTIFY_SOCKET is set (a Type=notify systemd service): run `up` in the "
                f"foreground (see `{PROG} systemd-unit`) and restart it with `systemctl restart`"
            )
        if args.command == "restart":
            return _commands.restart(args, env, file, state_dir)
        return _commands.up(args, env, file, state_dir)
    except UsageError as exc:
        say(f"error: {one_line(str(exc))}")
        return EXIT_USAGE
    except BrokenPipeError:  # `status --json | head -c 100`: the reader left; no traceback
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
