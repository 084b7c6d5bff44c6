"""Network addresses as operators write them: ``HOST:PORT``."""

from __future__ import annotations

from chunkfs.common.errors import InvalidArgument


def parse_addr(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) and check the port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise InvalidArgument(f"bad address {text!r}: expected HOST:PORT, for example 127.0.0.1:9600")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"bad address {text!r}: port must be 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
