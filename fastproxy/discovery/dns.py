"""The `dns` and `kubernetes` resolvers: an app's addresses from A/AAAA or SRV records.

Queries go through aiodns (c-ares) to configurable name servers; c-ares outcomes are
mapped here, once, to `ServiceNotFound` (an answer) or `ResolverUnavailable` (none).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Literal

import aiodns
import aiodns.error
import pycares

from fastproxy.discovery.model import (
    Address,
    DiscoveryError,
    Resolution,
    ResolverUnavailable,
    ServiceNotFound,
)
from fastproxy.discovery.template import NameTemplate

RecordType = Literal["A", "SRV"]

DNS_PORT = 53

# c-ares outcomes that are the server's authoritative word that nothing is there:
# NXDOMAIN, NOERROR without records of the type, and a name c-ares cannot ask for.
# Everything else (timeout, refused, SERVFAIL, connection errors, cancelled) means
# no answer was had.
_NOT_FOUND = frozenset(
    {aiodns.error.ARES_ENOTFOUND, aiodns.error.ARES_ENODATA, aiodns.error.ARES_EBADNAME}
)


def parse_nameserver(entry: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` to (ip, port); the port defaults to 53.

    c-ares only talks to IP addresses, so host names are refused. A bare IPv6 address
    is taken whole (`::1:53` is an address, not `::1` port 53): ports need brackets.
    """
    text = entry.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"name server {entry!r}: expected [ipv6] or [ipv6]:port")
        port_text = rest[1:] if rest else None
        if not _is_ip(host, version=6):
            raise ValueError(f"name server {entry!r}: {host!r} is not an IPv6 address")
    elif _is_ip(text):
        host, port_text = text, None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not _is_ip(host, version=4):
            raise ValueError(
                f"name server {entry!r}: expected an IP address, ip:port or [ipv6]:port"
            )
    if port_text is None:
        return host, DNS_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"name server {entry!r}: bad port {port_text!r}")
    return host, int(port_text)


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


def _ares_server(host: str, port: int) -> str:
    """The form `ares_set_servers_csv` reads; it takes a port per server."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DnsResolver:
    """Looks an app up by rendering its DNS name and querying A+AAAA or SRV records.

    A mode: the addresses of the name, each with the configured `port` (the target
    sidecar's internal port). SRV mode: hosts and ports from the records; only the
    lowest priority whose targets resolve is returned (the others are backups), and
    weights are left to the balancer. The TTL is the smallest among the records used.

    Answers within their TTL may come from c-ares's own cache (it counts TTLs down),
    so a change at the server shows once the old records expire, not before.
    """

    def __init__(
        self,
        template: NameTemplate,
        port: int | None,
        *,
        record: RecordType = "A",
        nameservers: Sequence[str] = (),
        timeout: float = 2.0,
        tries: int = 1,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if record == "A":
            if port is None or not 0 < port < 65536:
                raise ValueError(f"A records carry no port: a port 1-65535 is needed, not {port}")
        elif record == "SRV":
            if port is not None:
                raise ValueError("SRV records carry the port: do not configure one")
        else:
            raise ValueError(f"record type must be 'A' or 'SRV', not {record!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if tries < 1:
            raise ValueError(f"tries must be at least 1, not {tries}")
        self.template = template
        self.port = port
        self.record: RecordType = record
        self.nameservers: tuple[tuple[str, int], ...] = tuple(
            parse_nameserver(entry) for entry in nameservers
        )
        self.timeout = timeout
        self.tries = tries
        self._loop = loop
        self._dns: aiodns.DNSResolver | None = None
        self._deadline = 0.0
        self._closed = False

    def __repr__(self) -> str:
        servers = ",".join(_ares_server(*server) for server in self.nameservers) or "system"
        state = "closed" if self._closed else "open"
        port = f" port={self.port}" if self.port is not None else ""
        return f"<DnsResolver {self.record} {self.template.text!r}{port} servers={servers} {state}>"

    async def lookup(self, app_id: str, namespace: str) -> Resolution:
        try:
            name = self.template.render(app_id, namespace)
        except ValueError as exc:
            # No DNS name can be made for it, so no such app can exist there.
            raise ServiceNotFound(str(exc)) from None
        if self.record == "SRV":
            return await self._lookup_srv(name)
        assert self.port is not None
        addresses, ttl = await self._lookup_host(name, self.port)
        return Resolution(addresses, ttl)

    async def close(self) -> None:
        """Release the c-ares channel; lookups still running end `ResolverUnavailable`."""
        self._closed = True
        dns, self._dns = self._dns, None
        if dns is not None:
            await dns.close()

    # -- queries ---------------------------------------------------------------

    def _resolver(self) -> aiodns.DNSResolver:
        if self._closed:
            raise ResolverUnavailable("DNS resolver is closed")
        if self._dns is None:
            # Made on first use so that it binds to the loop the lookups run on.
            loop = self._loop or asyncio.get_running_loop()
            servers = [_ares_server(*server) for server in self.nameservers]
            dns = aiodns.DNSResolver(
                nameservers=servers or None, loop=loop, timeout=self.timeout, tries=self.tries
            )
            # c-ares bounds each attempt, doubling the timeout on every round over the
            # servers; this bounds the whole query at that worst case, in case it does not.
            rounds = 2**self.tries - 1
            self._deadline = self.timeout * rounds * max(1, len(dns.nameservers)) + 0.5
            self._dns = dns
        return self._dns

    async def _query(self, name: str, qtype: str) -> list[pycares.DNSRecord]:
        dns = self._resolver()
        try:
            async with asyncio.timeout(self._deadline):
                result = await dns.query_dns(name, qtype)
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            message = exc.args[1] if len(exc.args) > 1 else "error"
            if code in _NOT_FOUND:
                raise ServiceNotFound(f"DNS {qtype} {name}: {message}") from None
            raise ResolverUnavailable(f"DNS {qtype} {name}: {message}") from None
        except TimeoutError:
            raise ResolverUnavailable(
                f"DNS {qtype} {name}: no answer in {self._deadline:.1f}s"
            ) from None
        return result.answer

    async def _lookup_host(self, name: str, port: int) -> tuple[tuple[Address, ...], float]:
        """A and AAAA at once; one family failing does not hide the other's addresses."""
        outcomes = await asyncio.gather(
            self._query(name, "A"), self._query(name, "AAAA"), return_exceptions=True
        )
        addresses: list[Address] = []
        ttls: list[int] = []
        failures: list[DiscoveryError] = []
        for outcome in outcomes:
            if isinstance(outcome, DiscoveryError):
                failures.append(outcome)
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            for answer in outcome:
                # A CNAME chain leading to the addresses counts towards the TTL too.
                ttls.append(answer.ttl)
                if isinstance(answer.data, pycares.ARecordData | pycares.AAAARecordData):
                    addresses.append(Address(answer.data.addr, port))
        if addresses:
            return tuple(dict.fromkeys(addresses)), float(min(ttls))
        raise _worst(failures, f"DNS A/AAAA {name}: no addresses")

    async def _lookup_srv(self, name: str) -> Resolution:
        answers = await self._query(name, "SRV")
        # A "." target is the server saying the service is decidedly not there.
        targets = [
            a.data
            for a in answers
            if isinstance(a.data, pycares.SRVRecordData) and a.data.target.rstrip(".")
        ]
        if not targets:
            raise ServiceNotFound(f"DNS SRV {name}: no targets")
        srv_ttl = min(answer.ttl for answer in answers)
        failures: list[DiscoveryError] = []
        for priority in sorted({data.priority for data in targets}):
            group = sorted(
                (data for data in targets if data.priority == priority),
                key=lambda data: -data.weight,
            )
            addresses, ttl = await self._resolve_targets(group, failures)
            if addresses:
                return Resolution(addresses, float(min(srv_ttl, ttl)))
        raise _worst(failures, f"DNS SRV {name}: no target resolved")

    async def _resolve_targets(
        self, group: Iterable[pycares.SRVRecordData], failures: list[DiscoveryError]
    ) -> tuple[tuple[Address, ...], float]:
        """The addresses of one priority's targets; those that fail go to `failures`."""
        records = list(group)
        hosts = list(dict.fromkeys(r.target.rstrip(".") for r in records if not _is_ip(r.target)))
        outcomes = await asyncio.gather(
            *(self._lookup_host(host, 0) for host in hosts), return_exceptions=True
        )
        found: dict[str, tuple[tuple[Address, ...], float]] = {}
        for host, outcome in zip(hosts, outcomes, strict=True):
            if isinstance(outcome, DiscoveryError):
                failures.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                found[host] = outcome
        addresses: list[Address] = []
        ttls: list[float] = []
        for record in records:
            if _is_ip(record.target):
                addresses.append(Address(str(ipaddress.ip_address(record.target)), record.port))
                continue
            hit = found.get(record.target.rstrip("."))
            if hit is not None:
                addresses.extend(Address(a.host, record.port) for a in hit[0])
                ttls.append(hit[1])
        return tuple(dict.fromkeys(addresses)), min(ttls, default=float("inf"))


def _worst(failures: Sequence[DiscoveryError], fallback: str) -> DiscoveryError:
    """With nothing found: unavailable if any query went unanswered, else not found."""
    for failure in failures:
        if isinstance(failure, ResolverUnavailable):
            return failure
    return failures[0] if failures else ServiceNotFound(fallback)
