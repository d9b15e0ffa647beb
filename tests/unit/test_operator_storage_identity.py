"""The canonical storage identity: every spelling of one storage is one place."""

from __future__ import annotations

import pytest

from amfs_operator.storage_identity import (
    LOOPBACK,
    Place,
    canonical_host,
    claimed_prefixes,
    overlaps,
    parse_endpoint,
    partition_of,
    places,
)

P = 9000


def ident(endpoint: str | None, bucket: str = "bkt", region: str = "us-east-1",
          ns: str = "team") -> frozenset[Place]:
    return places(endpoint, region, bucket, ns)


# ---- hosts -------------------------------------------------------------------------------

@pytest.mark.parametrize("host", [
    "127.0.0.1", "localhost", "LOCALHOST", "localhost.", "127.0.0.1.", "127.1", "127.0.1",
    "2130706433", "0x7f000001", "0x7f.1", "0177.0.0.1", "017700000001", "127.255.255.254",
    "0.0.0.0", "0", "[::1]", "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::FFFF:7f00:1]",
    "[::]", "[::ffff:0.0.0.0]", "ip6-localhost", "localhost.localdomain",
])
def test_every_loopback_spelling_is_loopback(host: str) -> None:
    assert Place(f"{LOOPBACK}:{P}", "bkt") in ident(f"http://{host}:{P}")


@pytest.mark.parametrize(("host", "canonical"), [
    ("10.1.2.3", "10.1.2.3"),
    ("012.1.2.3", "10.1.2.3"),  # a leading zero is octal to the C resolver
    ("0xa.1.2.3", "10.1.2.3"),
    ("10.66051", "10.1.2.3"),
    ("167838211", "10.1.2.3"),
    ("[::ffff:10.1.2.3]", "10.1.2.3"),
    ("[2001:DB8:0:0::1]", "[2001:db8::1]"),
    ("MinIO.Example.", "minio.example"),
    ("s3_gw.local", "s3_gw.local"),
])
def test_addresses_and_names_have_one_spelling(host: str, canonical: str) -> None:
    assert canonical_host(host) == canonical


@pytest.mark.parametrize("host", ["127..1", "a b", "ex%41mple.com", "bücher.de", "-a.b", "[::1"])
def test_hosts_that_are_no_host_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match=r"host|IPv6"):
        parse_endpoint(f"http://{host}:{P}")


def test_numbers_out_of_range_are_names_not_addresses() -> None:
    assert canonical_host("256.1.1.1") == "256.1.1.1"  # not an address, a (strange) name
    assert canonical_host("1.2.3.4.5") == "1.2.3.4.5"


# ---- endpoints ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9000", "http://localhost:9000", "http://127.0.0.1:09000",
    "http://127.0.0.1:009000/", "http://127.0.0.1:9000/.", "http://127.0.0.1:9000//./",
    "HTTP://LocalHost:9000", "http://[::ffff:127.0.0.1]:9000", "http://127.1:9000/",
    "http://sub.localhost:9000", " http://127.0.0.1:9000 ", "http://0.0.0.0:9000",
])
def test_aliased_loopback_endpoints_are_one_place(url: str) -> None:
    assert Place(f"{LOOPBACK}:9000", "bkt") in ident(url)
    assert overlaps(ident(url), "amfs/a/", ident("http://127.0.0.1:9000"), "amfs/a/")


@pytest.mark.parametrize(("url", "port"), [
    ("http://minio.team.svc", 80), ("http://minio.team.svc:80", 80),
    ("https://minio.team.svc", 443), ("https://minio.team.svc:0443", 443),
    ("http://minio.team.svc:", 80),
])
def test_default_ports(url: str, port: int) -> None:
    assert parse_endpoint(url).port == port


def test_scheme_only_decides_the_default_port() -> None:
    # One port serves one protocol: http:// and https:// to it are the same server.
    assert ident("http://10.0.0.5:443") == ident("https://10.0.0.5")
    assert not overlaps(ident("http://10.0.0.5"), "r/", ident("https://10.0.0.5"), "r/")


@pytest.mark.parametrize(("url", "rule"), [
    ("ftp://h", "http:// or https://"),
    ("h:9000", "http:// or https://"),
    ("http://user:pw@127.0.0.1:9000", "user information"),
    ("http://@127.0.0.1:9000", "user information"),
    ("http://127.0.0.1:9000/other-bucket", "has a path"),
    ("http://127.0.0.1:9000/x/..", "has a path"),
    ("http://127.0.0.1:9000?x=1", "query or fragment"),
    ("http://127.0.0.1:9000#x", "query or fragment"),
    ("http://127.0.0.1:0", "invalid port"),
    ("http://127.0.0.1:65536", "invalid port"),
    ("http://127.0.0.1:9x", "invalid port"),
    ("http://:9000", "no host"),
    ("http://[fe80::1%25eth0]:9000", "zone"),
])
def test_endpoints_with_more_than_a_server_are_refused(url: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        parse_endpoint(url)


# ---- Kubernetes Service names ------------------------------------------------------------

def test_short_service_names_are_qualified_by_the_memory_namespace() -> None:
    full = ident("http://minio.team.svc.cluster.local:9000", ns="other")
    for short, ns in [("minio", "team"), ("minio.team", "x"), ("minio.team.svc", "x")]:
        assert overlaps(ident(f"http://{short}:9000", ns=ns), "r/", full, "r/"), short
    # Another namespace's "minio" is another Service: no false conflict.
    assert not overlaps(ident("http://minio:9000", ns="a"), "r/",
                        ident("http://minio:9000", ns="b"), "r/")


# ---- AWS ---------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    None, "https://s3.amazonaws.com", "https://s3.us-east-1.amazonaws.com",
    "https://s3.eu-west-1.amazonaws.com", "https://S3.EU-WEST-1.AMAZONAWS.COM.",
    "https://s3-eu-west-1.amazonaws.com", "https://s3.dualstack.us-west-2.amazonaws.com",
    "https://s3-fips.us-east-2.amazonaws.com", "https://s3-external-1.amazonaws.com",
    "http://s3.amazonaws.com:443", "https://s3-accelerate.amazonaws.com",
])
def test_aws_regional_and_global_endpoints_are_one_bucket_namespace(url: str | None) -> None:
    assert Place("aws:aws", "bkt") in ident(url)


@pytest.mark.parametrize("url", [
    "https://bkt.s3.us-east-1.amazonaws.com", "https://bkt.s3.amazonaws.com",
    "https://bkt.s3-us-west-2.amazonaws.com", "https://bkt.s3.dualstack.eu-west-1.amazonaws.com",
])
def test_aws_virtual_host_forms(url: str) -> None:
    found = ident(url, bucket="bkt")
    assert Place("aws:aws", "bkt") in found  # what the spelling means
    assert Place("aws:aws", "bkt", "bkt/") in found  # what a path-style request reaches
    assert overlaps(found, "amfs/a/", ident(None), "amfs/a/")


def test_a_virtual_host_naming_another_bucket_reaches_that_bucket() -> None:
    # Path-style through https://victim.s3...: bucket "victim", keys under "amfs/".
    attacker = ident("https://victim.s3.us-east-1.amazonaws.com", bucket="amfs")
    assert overlaps(attacker, "team/", ident(None, bucket="victim"), "amfs/team/")
    assert not overlaps(attacker, "team/", ident(None, bucket="victim"), "amfs/other/")


def test_bucket_names_with_dots_in_virtual_hosts() -> None:
    assert Place("aws:aws", "my.data", "x/") in ident("https://my.data.s3.amazonaws.com", "x")


@pytest.mark.parametrize(("region", "partition"), [
    ("us-east-1", "aws"), ("eu-central-1", "aws"), ("cn-north-1", "aws-cn"),
    ("us-gov-west-1", "aws-us-gov"), ("us-iso-east-1", "aws-iso"),
    ("us-isob-east-1", "aws-iso-b"),
])
def test_partitions_are_separate_bucket_namespaces(region: str, partition: str) -> None:
    assert partition_of(region) == partition
    assert ident(None, region=region) == {Place(f"aws:{partition}", "bkt")}


def test_china_and_govcloud_hosts() -> None:
    assert Place("aws:aws-cn", "bkt") in ident("https://s3.cn-north-1.amazonaws.com.cn")
    assert Place("aws:aws-us-gov", "bkt") in ident("https://s3.us-gov-west-1.amazonaws.com")
    assert not overlaps(ident(None, region="cn-north-1"), "r/", ident(None), "r/")


def test_look_alike_hosts_are_not_aws() -> None:
    for url in ("https://s3.amazonaws.com.evil.example", "https://amazonaws.com",
                "https://ec2.us-east-1.amazonaws.com"):
        assert not any(p.service.startswith("aws:") for p in ident(url)), url


# ---- virtual hosts on other providers ----------------------------------------------------

def test_a_custom_virtual_host_reaches_the_bucket_it_names() -> None:
    owner = ident("http://minio.store.svc:9000", bucket="victim")
    attacker = ident("http://victim.minio.store.svc:9000", bucket="amfs", ns="evil")
    assert overlaps(attacker, "team/", owner, "amfs/team/")
    assert not overlaps(attacker, "team/", owner, "amfs/teammate/")


def test_localhost_subdomains_are_loopback_and_virtual_hosts() -> None:
    found = ident("http://victim.localhost:9000", bucket="amfs")
    assert Place(f"{LOOPBACK}:9000", "amfs") in found
    assert Place(f"{LOOPBACK}:9000", "victim", "amfs/") in found
    assert overlaps(found, "team/", ident("http://127.0.0.1:9000", "victim"), "amfs/team/")


# ---- overlap and claimed prefixes --------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "expected"), [
    ("amfs/team/", "amfs/team/", True),
    ("amfs/team/", "amfs/team/sub/", True),
    ("amfs/team/sub/", "amfs/team/", True),
    ("amfs/team/", "amfs/teammate/", False),
    ("amfs/team/", "other/team/", False),
])
def test_overlap_is_one_root_a_prefix_of_the_other(a: str, b: str, expected: bool) -> None:
    here = ident("http://127.0.0.1:9000")
    assert overlaps(here, a, here, b) is expected
    assert overlaps(here, b, here, a) is expected


def test_different_buckets_or_servers_never_overlap() -> None:
    assert not overlaps(ident("http://127.0.0.1:9000", "a"), "r/",
                        ident("http://127.0.0.1:9000", "b"), "r/")
    assert not overlaps(ident("http://127.0.0.1:9000"), "r/", ident("http://127.0.0.1:9001"), "r/")
    assert not overlaps(ident("http://10.0.0.1:9000"), "r/", ident("http://127.0.0.1:9000"), "r/")


def test_claimed_prefixes_in_my_spelling_of_keys() -> None:
    here = ident("http://127.0.0.1:9000")
    assert claimed_prefixes(here, "amfs/team/", here, "amfs/team/sub/") == {"amfs/team/sub/"}
    assert claimed_prefixes(here, "amfs/team/sub/", here, "amfs/team/") == {"amfs/team/"}
    assert claimed_prefixes(here, "amfs/team/", here, "amfs/teammate/") == set()
    # Through an alias: the other root as my requests spell it.
    alias = ident("http://victim.localhost:9000", bucket="amfs")
    owner = ident("http://localhost:9000", bucket="victim")
    assert claimed_prefixes(owner, "amfs/", alias, "team/") == {"amfs/team/"}
    assert claimed_prefixes(alias, "team/", owner, "amfs/") == {""}
