# What the kernel says a process holds: the socket listening on a loopback TCP port (from
# /proc/net/tcp{,6}: the listener's inode, then /proc/<pid>/fd: whose it is) and open files (a process
# that holds devserver.lock was handed it by the runtime that spawned it). Unlike a command line or a
# pid file, a process cannot claim these: it holds them or it does not. Rule: read-only, Linux /proc,
# stdlib only; it reads files, so async callers run it in a thread.
from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

__all__ = ["holds_file", "listeners", "listens_on", "socket_inodes"]

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column
# The local addresses whose listener answers a connection to 127.0.0.1 (a wildcard one as well).
_ANSWERS_LOOPBACK = {
    ipaddress.ip_address("127.0.0.1"),
    ipaddress.ip_address("0.0.0.0"),
    ipaddress.ip_address("::"),
    ipaddress.ip_address("::ffff:127.0.0.1"),
}


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} print an address as 32-bit words, each in host byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def listeners(port: int) -> set[int]:
    """The inodes of the sockets listening on `port` that would answer a connection to 127.0.0.1."""
    found: set[int] = set()
    needle = f":{port:04X} "  # the port as the tables print it: only those lines are parsed
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = [line for line in f.read().splitlines()[1:] if needle in line]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            host, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and _address(host) in _ANSWERS_LOOPBACK:
                found.add(int(fields[9]))
    return found


def _fd_targets(pid: int) -> list[str]:
    directory = f"/proc/{pid}/fd"
    targets = []
    try:
        names = os.listdir(directory)
    except OSError:  # gone, or not ours to read
        return []
    for name in names:
        try:
            targets.append(os.readlink(f"{directory}/{name}"))
        except OSError:  # closed meanwhile
            continue
    return targets


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` has open (empty if it is gone or not readable)."""
    return {
        int(target[8:-1])
        for target in _fd_targets(pid)
        if target.startswith("socket:[") and target.endswith("]")
    }


def listens_on(pid: int, port: int) -> bool:
    """Is process `pid` what answers a TCP connection to 127.0.0.1:`port`? True only if something
    listens there and every such listener is a socket of `pid` (its threads share its fds)."""
    found = listeners(port)
    return bool(found) and found <= socket_inodes(pid)


def holds_file(pid: int, path: Path) -> bool:
    """Has process `pid` the file at `path` open (by its resolved path)?"""
    wanted = str(path.resolve())
    return wanted in _fd_targets(pid)
