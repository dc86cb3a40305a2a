# TLS material and API keys from disk, read at every (re)connect: a rotated certificate, key or API key
# is used from the next connect on. Rules: stdlib only (no trio, no temporalio: the connection child calls
# `connect_material` in a thread, the CLI calls `check_files` before anything starts); a private key file
# or an API-key file that group or others can read is refused, as ssh refuses such a key; a secret is
# never put in an exception message, a repr or a log line (only the file's name and mode are).
from __future__ import annotations

import os
import stat
from pathlib import Path

import attrs

from .._core._config import ConnectionConfig, TlsConfig
from .._core._errors import ConfigError

__all__ = ["TlsMaterial", "check_files", "connect_material", "read_api_key", "reads_files"]

_MAX_BYTES = 1 << 20  # a PEM bundle or an API key is far smaller; a larger file is a mistake


@attrs.frozen(kw_only=True)
class TlsMaterial:
    """What one connect hands the SDK: PEM bytes (None: the system roots / no client certificate)."""

    ca: bytes | None = attrs.field(default=None, repr=False)
    cert: bytes | None = attrs.field(default=None, repr=False)
    key: bytes | None = attrs.field(default=None, repr=False)
    server_name: str | None = None


def _read(path: Path, field: str, *, secret: bool) -> bytes:
    """The file's bytes: a regular file we can read; a `secret` one readable by nobody but its owner."""
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the open; fstat judges what was opened.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{field} {str(path)!r} cannot be read: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (secret and info.st_mode & 0o077):
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{field} {str(path)!r} is not a regular file")
        raise ConfigError(
            f"{field} {str(path)!r} is accessible by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): refusing it, as ssh does; chmod 600 it"
        )
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(_MAX_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{field} {str(path)!r} cannot be read: {exc.strerror}") from None
    if not data.strip():
        raise ConfigError(f"{field} {str(path)!r} is empty")
    if len(data) > _MAX_BYTES:
        raise ConfigError(f"{field} {str(path)!r} is larger than {_MAX_BYTES} bytes")
    return data


def read_api_key(path: Path) -> str:
    """The API key in `path`: one line of printable ASCII (surrounding whitespace dropped)."""
    data = _read(path, "api_key_file", secret=True)
    try:
        key = data.decode("ascii").strip()
    except UnicodeDecodeError:
        key = ""
    if not key or not key.isprintable():
        raise ConfigError(f"api_key_file {str(path)!r} must hold one line of printable ASCII (the key)")
    return key


def _pem(path: Path, field: str, *, secret: bool) -> bytes:
    data = _read(path, field, secret=secret)
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{field} {str(path)!r} is not PEM (no '-----BEGIN ' line)")
    return data


def _load_tls(tls: TlsConfig) -> TlsMaterial:
    return TlsMaterial(
        ca=_pem(tls.ca_file, "tls ca_file", secret=False) if tls.ca_file else tls.ca_data,
        cert=_pem(tls.cert_file, "tls cert_file", secret=False) if tls.cert_file else tls.cert_data,
        key=_pem(tls.key_file, "tls key_file", secret=True) if tls.key_file else tls.key_data,
        server_name=tls.server_name,
    )


def reads_files(config: ConnectionConfig) -> bool:
    """Does a connect with `config` read files (worth a thread), or only memory?"""
    return config.api_key_file is not None or (isinstance(config.tls, TlsConfig) and bool(config.tls.files))


def connect_material(config: ConnectionConfig) -> tuple[bool | TlsMaterial, str | None]:
    """The `tls` and `api_key` for one connect, the files read now (ConfigError naming the file)."""
    api_key = read_api_key(config.api_key_file) if config.api_key_file else config.api_key
    tls = _load_tls(config.tls) if isinstance(config.tls, TlsConfig) else config.tls
    return tls, api_key


def check_files(config: ConnectionConfig) -> ConnectionConfig:
    """Before anything starts (the CLI): every file is readable and safe (ConfigError naming it), and
    the config with its paths absolute (a daemon works in its state dir)."""
    connect_material(config)
    tls = config.tls
    if isinstance(tls, TlsConfig):
        tls = attrs.evolve(
            tls,
            ca_file=tls.ca_file and tls.ca_file.absolute(),
            cert_file=tls.cert_file and tls.cert_file.absolute(),
            key_file=tls.key_file and tls.key_file.absolute(),
        )
    key_file = config.api_key_file and config.api_key_file.absolute()
    return attrs.evolve(config, tls=tls, api_key_file=key_file)
