"""A minimal DNS client (A records over UDP), to check the cluster DNS from the host.

The host does not use the cluster DNS for its own lookups (it reads its /etc/hosts block), so
waiting for the DNS server to answer, and tests asking it directly, need a client of their own.
"""

from __future__ import annotations

import secrets
import socket
import struct

TYPE_A = 1
CLASS_IN = 1
RCODE_NXDOMAIN = 3


class DnsQueryError(RuntimeError):
    """No valid answer came back (timeout, malformed packet, server failure)."""


def build_query(name: str, query_id: int) -> bytes:
    """A recursive query for the A records of ``name``."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        len(part).to_bytes(1, "big") + part.encode("ascii") for part in name.rstrip(".").split(".") if part
    )
    return header + labels + b"\x00" + struct.pack("!HH", TYPE_A, CLASS_IN)


def _skip_name(packet: bytes, offset: int) -> int:
    while True:
        if offset >= len(packet):
            raise DnsQueryError("truncated name in the answer")
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def parse_answer(packet: bytes, query_id: int) -> tuple[int, list[str]]:
    """(response code, the A records' addresses) of an answer to the query ``query_id``."""
    if len(packet) < 12:
        raise DnsQueryError("answer shorter than a DNS header")
    answer_id, flags, questions, answers, _, _ = struct.unpack("!HHHHHH", packet[:12])
    if answer_id != query_id or not flags & 0x8000:
        raise DnsQueryError("not an answer to this query")
    offset = 12
    for _ in range(questions):
        offset = _skip_name(packet, offset) + 4
    addresses = []
    for _ in range(answers):
        offset = _skip_name(packet, offset)
        kind, klass, _ttl, length = struct.unpack("!HHIH", packet[offset : offset + 10])
        offset += 10
        if kind == TYPE_A and klass == CLASS_IN and length == 4:
            addresses.append(socket.inet_ntoa(packet[offset : offset + 4]))
        offset += length
    return flags & 0x000F, addresses


def query_a(server: str, name: str, timeout_s: float = 2.0, port: int = 53) -> list[str]:
    """The A records ``server`` gives for ``name`` ([] for NXDOMAIN); raises :class:`DnsQueryError`."""
    query_id = secrets.randbelow(0x10000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.sendto(build_query(name, query_id), (server, port))
            packet, _ = sock.recvfrom(4096)
        except OSError as exc:
            raise DnsQueryError(f"no answer from {server}:{port} for {name}: {exc}") from exc
    code, addresses = parse_answer(packet, query_id)
    if code not in (0, RCODE_NXDOMAIN):
        raise DnsQueryError(f"{server}:{port} answered {name} with response code {code}")
    return addresses
