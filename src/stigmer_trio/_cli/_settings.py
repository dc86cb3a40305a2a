# Settings resolution: the TOML file, the state dir, the worker specs and the full RuntimeConfig, from
# flags > STIGMER_TRIO_* environment > TOML file > defaults (the precedence itself is _core/_config's
# `resolve`). `Settings` is everything `up` was given, as JSON: a detached daemon gets it through the
# detach protocol and resolves exactly what its parent resolved, so a new `up` flag reaches it without
# anyone rebuilding a command line. Rule: stdlib only at import (the hot paths resolve the state dir).
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from .._core._layout import default_state_dir
from ._common import UsageError, say

TYPE_CHECKING = False  # typing is not imported at run time: the hot paths stay lean
if TYPE_CHECKING:
    from typing import Any

    from .._core._config import RuntimeConfig, WorkerSpec

__all__ = ["Settings", "full_config", "load_toml", "load_worker_specs", "resolve_state_dir"]

ENV_PREFIX = "STIGMER_TRIO_"
INTERNAL_ENV_PREFIX = "STIGMER_TRIO_INTERNAL_"  # the detach protocol's, never settings
# The Temporal SDK's environment configuration (TEMPORAL_ADDRESS, TEMPORAL_API_KEY, ...): read in external
# mode only, below our own settings; it travels to a detached daemon with ours (a pipe, never argv).
TEMPORAL_ENV_PREFIX = "TEMPORAL_"


def load_toml(path: str | None) -> dict[str, Any]:
    """The parsed TOML file ({} without one); UsageError if it cannot be read or parsed."""
    if path is None:
        return {}
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"config file {path!r} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"config file {path!r} is not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from None
    except RecursionError:
        raise UsageError(f"config file {path!r} nests its arrays or tables too deeply") from None


def resolve_state_dir(flag: str | None, env: Mapping[str, str], file: Mapping[str, Any]) -> Path:
    """The state dir, absolute: --state-dir > STIGMER_TRIO_STATE_DIR > the file's > the XDG default."""
    raw = flag or env.get("STIGMER_TRIO_STATE_DIR") or file.get("state_dir")
    if raw is None:
        return default_state_dir(env)
    if not isinstance(raw, str) or not raw or "\0" in raw:
        raise UsageError(f"state_dir must be a path, got {raw!r}")
    try:
        path = Path(raw).expanduser().absolute()
        if path.exists() and not path.is_dir():
            raise UsageError(f"state_dir {str(path)!r} is not a directory")
    except (RuntimeError, OSError) as exc:  # '~nobody-here/x'; a name too long to look up
        raise UsageError(f"state_dir {raw!r} cannot be used: {exc}") from None
    return path


class Settings:
    """What `up` was given: every option of its parser (by argparse dest, whichever they are), the
    STIGMER_TRIO_* environment and the parsed TOML file, with the state dir already resolved."""

    __slots__ = ("env", "file", "flags")

    def __init__(self, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any]) -> None:
        self.flags = dict(flags)
        self.env = dict(env)
        self.file = dict(file)

    @classmethod
    def gather(
        cls, args: argparse.Namespace, env: Mapping[str, str], file: Mapping[str, Any], state_dir: Path
    ) -> Settings:
        """From the parsed command line: every attribute of `args` travels, none is named here."""
        flags = {name: value for name, value in vars(args).items() if name != "command"}
        flags["state_dir"] = str(state_dir)
        ours = {
            k: v
            for k, v in env.items()
            if k.startswith((ENV_PREFIX, TEMPORAL_ENV_PREFIX)) and not k.startswith(INTERNAL_ENV_PREFIX)
        }
        return cls(flags, ours, file)

    @property
    def state_dir(self) -> Path:
        return Path(self.flags["state_dir"])

    def to_json(self) -> str:
        return json.dumps({"flags": self.flags, "env": self.env, "file": self.file})

    @classmethod
    def from_json(cls, text: str) -> Settings:
        document = json.loads(text)
        return cls(document["flags"], document["env"], document["file"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and (self.flags, self.env, self.file) == (
            other.flags,
            other.env,
            other.file,
        )

    def __repr__(self) -> str:
        env = {k: "<hidden>" if k.startswith(TEMPORAL_ENV_PREFIX) else v for k, v in self.env.items()}
        return f"Settings(flags={self.flags!r}, env={env!r}, file={self.file!r})"


def full_config(settings: Settings, *, create: bool = True) -> RuntimeConfig:
    """The RuntimeConfig `up` runs (the daemon's defaults: the demo worker and a loopback endpoint);
    UsageError naming the field for any bad value, before anything is created. Loads the --worker
    modules and (with `create`) creates the state dir."""
    import attrs

    from .._boundary._envprofile import load_temporal_profile
    from .._boundary._statefiles import ensure_state_dir
    from .._boundary._tls import check_files, reads_files
    from .._core._config import HttpConfig, http_options, is_loopback, resolve
    from .._core._errors import ConfigError

    flags, env, file = settings.flags, settings.env, settings.file
    names = list(flags.get("workers") or ())
    if not names:
        raw = env.get("STIGMER_TRIO_WORKERS") or file.get("workers")
        if isinstance(raw, str):
            names = [n.strip() for n in raw.split(",") if n.strip()]
        elif isinstance(raw, list) and all(isinstance(n, str) for n in raw):
            names = raw
        elif raw is not None:
            raise UsageError(f"workers must be a list of 'MODULE:ATTR' strings, got {raw!r}")
    specs = [spec for name in names for spec in load_worker_specs(name)]
    try:
        config = resolve(
            flags={**flags, "workers": specs},
            env=env,
            file={k: v for k, v in file.items() if k != "workers"},
            load_profile=lambda name: load_temporal_profile(name, env),
        )
        if config.connection is not None and reads_files(config.connection):
            # TLS and API-key files: readable and safe now (exit 2 otherwise), absolute for the daemon
            config = attrs.evolve(config, connection=check_files(config.connection))
        if (
            flags.get("demo_worker") is None
            and "STIGMER_TRIO_DEMO_WORKER" not in env
            and "demo_worker" not in file
        ):
            config = attrs.evolve(config, demo_worker=True)  # the daemon runs the demo worker by default
        if flags.get("http") is None and "STIGMER_TRIO_HTTP" not in env and "http" not in file:
            # the daemon serves its endpoint by default (loopback, a free port; `status` finds it)
            options = http_options(flags=flags, env=env, file=file)
            config = attrs.evolve(config, http=HttpConfig(**options))
        if create:
            ensure_state_dir(config.state_dir)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if config.http is not None and config.http.allow_remote and not is_loopback(config.http.host):
        say(
            f"warning: the control endpoint will listen on {config.http.host}, beyond this machine; "
            "it has no authentication"
        )
    return config


def load_worker_specs(name: str) -> list[WorkerSpec]:
    """`MODULE:ATTR` -> WorkerSpecs: a WorkerSpec, or a zero-argument callable returning one or a list."""
    import importlib

    from .._core._config import WorkerSpec

    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--worker {name!r}: expected MODULE:ATTR")
    if os.getcwd() not in sys.path and "" not in sys.path:
        # after the installed packages: a file there never shadows trio, psutil, ... (see __main__.py)
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"--worker {name!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"--worker {name!r}: module {module_name!r} has no attribute {attr!r}") from None
    if callable(value) and not isinstance(value, WorkerSpec):
        try:
            value = value()
        except Exception as exc:
            raise UsageError(f"--worker {name!r}: calling it raised {type(exc).__name__}: {exc}") from None
    specs = value if isinstance(value, list | tuple) else [value]
    if not specs or not all(isinstance(spec, WorkerSpec) for spec in specs):
        raise UsageError(
            f"--worker {name!r}: expected a WorkerSpec or a zero-argument callable returning one or a "
            f"list of them, got {type(value).__name__}"
        )
    return list(specs)
