"""Rotated credentials in a mounted Secret directory take effect without a restart.

moto enforces IAM authentication only process-wide, so this test runs its own
moto server process with authentication switched on after setup, and rotates
between two real access keys of one IAM user.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from amfs_s3.config import S3Settings
from tests.fixtures.s3 import free_port
from tests.fixtures.sidecar import SidecarFactory, wait_until

from .test_api_entries import WRITE

POLICY = json.dumps({"Version": "2012-10-17",
                     "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


@pytest.fixture
def authenticating_s3() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_until(up, 30, 0.1, message="moto server process")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def write_credentials(directory: Path, key: dict[str, str]) -> None:
    """Like the kubelet: new files in place, then an atomic swap."""
    for name, value in (("AWS_ACCESS_KEY_ID", key["AccessKeyId"]),
                        ("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])):
        temporary = directory / f".{name}.tmp"
        temporary.write_text(value + "\n")
        os.replace(temporary, directory / name)


@pytest.mark.moto_only(reason="rotates between two IAM access keys of one user: needs moto's "
                       "IAM API and its process-wide authentication switch; the session's "
                       "SeaweedFS has one static identity")
def test_rotated_secret_files_are_used_without_restart(
    authenticating_s3: str, sidecar_factory: SidecarFactory, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = {"endpoint_url": authenticating_s3, "region_name": "us-east-1",
             "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="agent")
    iam.put_user_policy(UserName="agent", PolicyName="all", PolicyDocument=POLICY)
    old = iam.create_access_key(UserName="agent")["AccessKey"]
    new = iam.create_access_key(UserName="agent")["AccessKey"]
    boto3.client("s3", **admin).create_bucket(Bucket="rotating")
    # From here on every request must be signed by a key moto knows.
    urllib.request.urlopen(urllib.request.Request(
        authenticating_s3 + "/moto-api/reset-auth", data=b"0", method="POST",
        headers={"Content-Type": "text/plain"}), timeout=5)

    secret_dir = tmp_path / "credentials"
    secret_dir.mkdir()
    write_credentials(secret_dir, old)
    settings = S3Settings(bucket="rotating", endpoint_url=authenticating_s3,
                          poll_interval=0.2, resync_interval=60)
    caplog.set_level(logging.INFO)
    running = sidecar_factory(settings=settings, credentials_dir=secret_dir,
                              adapter_options={"max_attempts": 1})
    client = running.client()

    def write(value: str) -> Any:
        return client.request("POST", "/api/v1/entries", {**WRITE, "value": value})

    assert write("with the old key").status == 201

    # The old key is revoked: the sidecar's requests now fail as unavailable, never 404.
    boto3.client("iam", endpoint_url=authenticating_s3, region_name="us-east-1",
                 aws_access_key_id=new["AccessKeyId"],
                 aws_secret_access_key=new["SecretAccessKey"]).delete_access_key(
        UserName="agent", AccessKeyId=old["AccessKeyId"])
    refused = write("refused")
    assert refused.status == 503, refused.body

    write_credentials(secret_dir, new)
    wait_until(lambda: write("with the new key").status == 201, message="the rotated key in use")

    read = client.read("checkout-service", "retry-pattern", consistent=True)
    assert read is not None and read.value == "with the new key"
    messages = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "credentials rotated" in messages
    for secret in (old["SecretAccessKey"], new["SecretAccessKey"], new["AccessKeyId"]):
        assert secret not in messages
