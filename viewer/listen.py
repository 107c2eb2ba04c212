"""Where the viewer listens, checked before viser starts: viser retries an address it cannot bind on
the next port, a thousand times, and waits forever when none works (an unknown host, a port beyond
65535), so every such case is decided here as one `ConfigError` naming the option.

    port, note = choose_port("127.0.0.1", 8080)   # 8081, "port 8080 is taken; ..." when 8080 is busy
"""

from __future__ import annotations

import errno
import socket

from scene3d.errors import ConfigError

PORTS_TRIED = 100  # a taken port moves on to at most this many following ones


def _bindable(family: int, address: tuple, port: int) -> OSError | None:
    """None when `port` on `address` can be bound now (as the server will, with SO_REUSEADDR), else the error."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address[0], port, *address[2:]))
        except OSError as err:
            return err
    return None


def choose_port(host: str, port: int, strict: bool = False) -> tuple[int, str | None]:
    """(the port to listen on, a note to print when it is not `port`). `port` 0 lets the system pick.
    A taken port moves to the next free one, or with `strict` is an error."""
    if not 0 <= port <= 65535:
        raise ConfigError("--port", f"{port} is not a port number (0-65535; 0 picks a free one)")
    try:
        family, *_, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                 flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError("--host", f"{host!r} is not an address or a name this machine resolves ({err})") from None
    for candidate in range(port, min(port + PORTS_TRIED, 65536)) if port else (0,):
        err = _bindable(family, address, candidate)
        if err is None:
            if candidate == port:
                return port, None
            return candidate, f"port {port} is taken; the viewer listens on {candidate} instead (--strict-port " \
                              "makes a taken port an error)"
        if err.errno != errno.EADDRINUSE:
            raise ConfigError("--host", f"cannot listen on {host}: {err.strerror or err} (is it an address of "
                              "this machine?)")
        if strict:
            raise ConfigError("--port", f"port {port} is taken by another program (choose another, or drop "
                              "--strict-port to use the next free one)")
    raise ConfigError("--port", f"ports {port}-{min(port + PORTS_TRIED, 65536) - 1} are all taken")
