# The Temporal SDK's own environment configuration (temporalio.envconfig: TEMPORAL_ADDRESS,
# TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE and the profiles of temporal.toml),
# so the environment that drives the `temporal` CLI and the official samples drives an external-mode
# runtime too. Rules: temporalio.envconfig (0.2-0.3 s to import) is imported only when there is something
# to read (a profile named, a TEMPORAL_* variable, or a temporal.toml at its default place): `up` without
# them, and every other command, never pay for it. File paths stay paths (read at each connect by _tls,
# so a rotation is seen; envconfig's own to_client_connect_config would read them once); only inline
# data becomes bytes. The result is plain data for _core/_config's precedence, below all of ours.
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._core._errors import ConfigError

__all__ = ["default_config_file", "load_temporal_profile"]

_PREFIX = "TEMPORAL_"


def default_config_file(environ: Mapping[str, str]) -> Path | None:
    """Where the SDK looks for temporal.toml when TEMPORAL_CONFIG_FILE is not set (its Linux default:
    $XDG_CONFIG_HOME/temporalio/temporal.toml, else ~/.config/temporalio/temporal.toml)."""
    base = environ.get("XDG_CONFIG_HOME") or (
        str(Path(environ["HOME"]) / ".config") if environ.get("HOME") else None
    )
    return Path(base) / "temporalio" / "temporal.toml" if base else None


def _wanted(profile: str | None, env: Mapping[str, str], environ: Mapping[str, str]) -> bool:
    if profile is not None or any(k.startswith(_PREFIX) and v for k, v in env.items()):
        return True
    path = default_config_file(environ)
    return path is not None and path.exists()


def _source(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Path):
        return {f"{prefix}_file": value}
    if isinstance(value, str):
        value = value.encode()
    return {f"{prefix}_data": value} if value else {}


def load_temporal_profile(
    profile: str | None, env: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The SDK's profile `profile` (None: TEMPORAL_PROFILE, else "default") with the TEMPORAL_* variables
    of `env` over it, as {address, namespace, api_key, tls: {disabled, server_name, ca_file | ca_data,
    cert_file | cert_data, key_file | key_data}} (only what is set); {} when there is nothing to read.
    `environ` (default: the process's) locates the default temporal.toml. ConfigError in one line."""
    environ = os.environ if environ is None else environ
    if not _wanted(profile, env, environ):
        return {}
    from temporalio.envconfig import ClientConfigProfile  # only now: 0.2-0.3 s

    variables = {k: v for k, v in env.items() if k.startswith(_PREFIX)}
    variables.update({k: environ[k] for k in ("HOME", "XDG_CONFIG_HOME") if k in environ})
    try:
        loaded = ClientConfigProfile.load(profile=profile, override_env_vars=variables)
    except Exception as exc:  # the SDK's ConfigError (a Rust exception type), TypeError, OSError
        where = f"temporal profile {profile!r}" if profile else "temporal environment configuration"
        raise ConfigError(f"{where}: {' '.join(str(exc).split())}") from None
    result: dict[str, Any] = {}
    for name in ("address", "namespace", "api_key"):
        if value := getattr(loaded, name):
            result[name] = value
    if loaded.tls is not None:
        tls: dict[str, Any] = {}
        if loaded.tls.disabled is not None:
            tls["disabled"] = loaded.tls.disabled
        if loaded.tls.server_name:
            tls["server_name"] = loaded.tls.server_name
        tls.update(_source("ca", loaded.tls.server_root_ca_cert))
        tls.update(_source("cert", loaded.tls.client_cert))
        tls.update(_source("key", loaded.tls.client_private_key))
        result["tls"] = tls
    return result
