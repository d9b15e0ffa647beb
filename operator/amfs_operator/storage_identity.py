"""Which storage a memory's keys land on, whatever the spelling of its endpoint (pure).

Claims and deletions compare *places*, never endpoint strings: ``http://localhost:9000``,
``http://127.0.0.1:09000/.`` and ``http://[::ffff:127.0.0.1]:9000`` are one server; no
endpoint, ``https://s3.eu-west-1.amazonaws.com`` and ``https://s3.amazonaws.com`` are one
bucket namespace (AWS bucket names are global within a partition).

A :class:`Place` is (service, bucket, base): the requests for key ``k`` reach object
``base + k`` of ``bucket`` on ``service``. An endpoint can name more than one place
because a server may read a bucket from the host (virtual-hosted style):
``http://team.minio:9000`` with bucket ``b`` may be server ``team.minio`` (bucket ``b``)
or server ``minio`` (bucket ``team``, keys under ``b/``). Every reading is kept, so an
overlap is found whichever one the server uses; the cost is a conflict for spellings
no one uses by accident.

What normalisation cannot know, and is therefore not detected: names that only DNS or
the network make equal (a Service's ClusterIP or a CNAME for its name, wildcard DNS such
as ``127.0.0.1.nip.io``, the node's own addresses, access points and aliases of AWS
buckets). No lookup is ever made.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

AWS_DOMAINS = {("amazonaws", "com"): "aws", ("amazonaws", "com", "cn"): "aws-cn"}
CLUSTER_DOMAIN = "svc.cluster.local"
LOOPBACK = "loopback"
DEFAULT_PORTS = {"http": 80, "https": 443}

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# s3, s3-fips, s3-external-1, s3-us-west-2, s3-accelerate, s3-accesspoint, ...
_AWS_SERVICE = re.compile(r"^s3(-[a-z0-9-]+)?$")
_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_AWS_QUALIFIERS = {"dualstack", "fips"}
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
# Region prefixes of the partitions other than "aws" (each its own bucket namespace).
_PARTITIONS = (("cn-", "aws-cn"), ("us-gov-", "aws-us-gov"), ("us-isob-", "aws-iso-b"),
               ("us-iso-", "aws-iso"), ("eu-isoe-", "aws-iso-e"), ("us-isof-", "aws-iso-f"))


@dataclass(frozen=True, order=True)
class Place:
    """Requests for key ``k`` reach object ``base + k`` of ``bucket`` on ``service``."""

    service: str  # "aws:<partition>" or "<canonical host>:<port>"
    bucket: str
    base: str = ""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # canonical: "loopback", a dotted IPv4, "[v6]" or a lower-case DNS name
    port: int


def parse_endpoint(url: str) -> Endpoint:
    """``scheme://host[:port]`` in canonical form; :class:`ValueError` names what is wrong.

    A path is accepted only when it names nothing (``/``, ``/.``): with a path, the
    bucket in the request is no longer the first path segment the server reads.
    """
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r} must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"{url!r} must not contain user information ('user@')")
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        raise ValueError(f"{url!r} must not have a query or fragment (scheme://host[:port])")
    if any(segment not in {"", "."} for segment in parts.path.split("/")):
        raise ValueError(
            f"{url!r} has a path ({parts.path!r}); give scheme://host[:port] only "
            "(the bucket is spec.bucket)"
        )
    return Endpoint(scheme, canonical_host(_host_of(parts.netloc, url)), _port(parts, url))


def _host_of(netloc: str, url: str) -> str:
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise ValueError(f"{url!r} has an unterminated IPv6 address")
        return netloc[: end + 1]
    host = netloc.rsplit(":", 1)[0] if ":" in netloc else netloc
    if not host:
        raise ValueError(f"{url!r} has no host")
    return host


def _port(parts: urllib.parse.SplitResult, url: str) -> int:
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port (a number from 1 to 65535)") from None
    if port is None:
        return DEFAULT_PORTS[parts.scheme.lower()]
    if port == 0:
        raise ValueError(f"{url!r} has an invalid port (a number from 1 to 65535)")
    return port


def canonical_host(host: str) -> str:
    """One spelling per host: loopback addresses → ``loopback``; IPv4 in any form the C
    resolver accepts (``0x7f.1``, ``017700000001``, ``2130706433``) → dotted decimal;
    IPv6 → compressed, IPv4-mapped → IPv4; names → lower case, no trailing dot (a name
    is kept as a name: ``team.localhost`` may also name bucket ``team``, see
    :func:`server_of`)."""
    text = host.strip().lower()
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    if text.startswith("[") and text.endswith("]"):
        address = _ipv6(text[1:-1], host)
    else:
        text = text[:-1] if text.endswith(".") else text
        address = _ipv4(text)
        if address is None:
            return _dns_name(text, host)
    if address.is_loopback or address.is_unspecified:  # 0.0.0.0 and [::] reach this host
        return LOOPBACK
    return f"[{address.compressed}]" if address.version == 6 else str(address)


def _ipv6(text: str, original: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if "%" in text:
        raise ValueError(f"host {original!r}: an IPv6 zone ('%') is not supported")
    try:
        address = ipaddress.IPv6Address(text)
    except ipaddress.AddressValueError:
        raise ValueError(f"host {original!r} is not a valid IPv6 address") from None
    return address.ipv4_mapped or address


def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    """inet_aton's reading: 1-4 parts, each decimal, 0x-hex or 0-octal; the last part
    fills the remaining bytes. ``None`` when *text* is not an address in that syntax."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        number = _c_number(part)
        if number is None:
            return None
        numbers.append(number)
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _c_number(part: str) -> int | None:
    try:
        if part[:2] == "0x":
            return int(part[2:], 16) if part[2:] else 0
        if len(part) > 1 and part[0] == "0":
            return int(part[1:], 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


def _dns_name(text: str, original: str) -> str:
    labels = text.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            f"host {original!r} is not a DNS name, an IPv4 address or a [bracketed] IPv6 "
            "address (labels of letters, digits and '-'; internationalised names in their "
            "xn-- form)"
        )
    return text


def server_of(host: str) -> str:
    """The server a canonical host reaches: loopback names (RFC 6761 ``*.localhost``
    too) are the loopback addresses."""
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return LOOPBACK
    return host


def _is_address(host: str) -> bool:
    return host == LOOPBACK or host.startswith("[") or _ipv4(host) is not None


def partition_of(region: str) -> str:
    """The AWS partition (its own bucket namespace) a region belongs to."""
    region = region.strip().lower()
    return next((name for prefix, name in _PARTITIONS if region.startswith(prefix)), "aws")


def places(
    endpoint_url: str | None, region: str, bucket: str, k8s_namespace: str
) -> frozenset[Place]:
    """Every place requests for *bucket* through *endpoint_url* may reach.

    *k8s_namespace* qualifies a short Service name (``http://minio:9000`` in namespace
    ``team`` is ``minio.team.svc.cluster.local``), the way the sidecar's resolver does.
    """
    if not endpoint_url:
        return frozenset({Place(f"aws:{partition_of(region)}", bucket)})
    endpoint = parse_endpoint(endpoint_url)
    found: set[Place] = set()
    for host in _host_spellings(endpoint.host, k8s_namespace):
        found |= _readings(host, endpoint.port, bucket)
    return frozenset(found)


def _host_spellings(host: str, k8s_namespace: str) -> set[str]:
    """The names a pod's resolver tries: a single label only as a Service of the
    memory's own namespace (another namespace's ``minio`` is another server)."""
    if _is_address(host) or server_of(host) == LOOPBACK:
        return {host}
    labels = host.split(".")
    if len(labels) == 1:
        return {f"{host}.{k8s_namespace}.{CLUSTER_DOMAIN}"}
    spellings = {host}
    if len(labels) == 2:
        spellings.add(f"{host}.{CLUSTER_DOMAIN}")
    elif labels[-1] == "svc" and len(labels) == 3:
        spellings.add(f"{host}.cluster.local")
    return spellings


def _readings(host: str, port: int, bucket: str) -> set[Place]:
    """Path-style (host is the server) and every virtual-hosted reading of *host*."""
    aws = _aws_service(host)
    if aws is not None:
        service, vhost = aws
        readings = {Place(service, bucket)}
        if vhost:
            readings.add(Place(service, vhost, f"{bucket}/"))
        return readings
    readings = {Place(f"{server_of(host)}:{port}", bucket)}
    if _is_address(host):
        return readings
    labels = host.split(".")
    for cut in range(1, len(labels)):
        vhost, server = ".".join(labels[:cut]), ".".join(labels[cut:])
        if _BUCKET.match(vhost):
            readings.add(Place(f"{server_of(server)}:{port}", vhost, f"{bucket}/"))
    return readings


def _aws_service(host: str) -> tuple[str, str] | None:
    """(``aws:<partition>``, virtual-host bucket or "") for an S3 host of AWS, else ``None``.

    The S3 label is the last ``s3``/``s3-…`` label followed only by region and
    ``dualstack``/``fips`` labels; what precedes it is a bucket (names may hold dots).
    """
    labels = host.split(".")
    for domain, partition in AWS_DOMAINS.items():
        if tuple(labels[-len(domain):]) != domain or len(labels) <= len(domain):
            continue
        rest = labels[: -len(domain)]
        index = len(rest) - 1
        host_region = ""
        while index >= 0 and (rest[index] in _AWS_QUALIFIERS or _AWS_REGION.match(rest[index])):
            if _AWS_REGION.match(rest[index]):
                host_region = rest[index]
            index -= 1
        if index < 0 or not _AWS_SERVICE.match(rest[index]):
            return None
        dashed = rest[index][3:]  # s3-us-west-2: the legacy dash-region form
        host_region = host_region or (dashed if _AWS_REGION.match(dashed) else "")
        if partition == "aws" and host_region:
            partition = partition_of(host_region)
        return f"aws:{partition}", ".".join(rest[:index])
    return None


Location = tuple[str, str, str]  # (service, bucket, key prefix)


def locations(found: frozenset[Place], root: str) -> frozenset[Location]:
    """(service, bucket, key prefix) of a root at each place."""
    return frozenset((p.service, p.bucket, p.base + root) for p in found)


def overlaps(a: frozenset[Place], root_a: str, b: frozenset[Place], root_b: str) -> bool:
    """Some key could belong to both: one key prefix is a prefix of the other somewhere."""
    return locations_overlap(locations(a, root_a), locations(b, root_b))


def locations_overlap(a: frozenset[Location], b: frozenset[Location]) -> bool:
    for service, bucket, prefix in a:
        for other_service, other_bucket, other_prefix in b:
            if bucket == other_bucket and service == other_service and (
                prefix.startswith(other_prefix) or other_prefix.startswith(prefix)
            ):
                return True
    return False


def claimed_prefixes(
    mine: frozenset[Place], root: str, other: frozenset[Place], other_root: str
) -> set[str]:
    """The key prefixes, as *my* requests spell keys, that fall under another root.

    A prefix that is also a prefix of *root* means every key of mine is the other's.
    """
    found: set[str] = set()
    for place in mine:
        for theirs in other:
            if (place.service, place.bucket) != (theirs.service, theirs.bucket):
                continue
            claimed = theirs.base + other_root
            if claimed.startswith(place.base):
                prefix = claimed[len(place.base):]
                if prefix.startswith(root) or root.startswith(prefix):
                    found.add(prefix)
            elif place.base.startswith(claimed):
                found.add("")
    return found
