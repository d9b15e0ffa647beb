"""``--embedded-s3``: an S3 server on loopback, for trying the sidecar on a laptop.

``seaweedfs`` (the default) keeps its data under ``.run/seaweedfs``, so the memory
survives a restart; ``moto`` keeps everything in memory, gone when the process exits.
Nothing here is meant for a pod.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError
from pydantic import SecretStr

from amfs_s3.config import S3Settings

EMBEDDED_BUCKET = "amfs-local"
SEAWEEDFS_DIR = Path(".run/seaweedfs")
PROVIDERS = ("seaweedfs", "moto")
# moto accepts any key; explicit ones keep boto3 from searching the credential chain.
MOTO_KEY = "embedded"


@dataclass
class EmbeddedS3:
    provider: str
    endpoint_url: str
    access_key: str
    secret_key: str
    data_dir: Path | None  # None: in memory
    server: Any

    def stop(self) -> None:
        self.server.stop()

    def data_lines(self) -> list[str]:
        """Where the memory lives and how to wipe it."""
        if self.data_dir is None:
            return ["Memory is kept in this process only: it is gone when it stops "
                    "(drop --embedded-s3=moto to keep it across restarts)."]
        return [f"Memory is kept in {self.data_dir} and survives a restart; "
                f"to wipe it, stop the sidecar and run: rm -rf {self.data_dir}"]

    def stopped_line(self) -> str:
        if self.data_dir is None:
            return "Embedded S3 stopped; its data is gone."
        return f"Embedded S3 stopped; its data stays in {self.data_dir}."


def starting_line(provider: str, data_dir: Path = SEAWEEDFS_DIR) -> str:
    where = "moto, in memory" if provider == "moto" else f"SeaweedFS, data in {data_dir.resolve()}"
    return f"Starting an embedded S3 server ({where}) on 127.0.0.1 ..."


def start_embedded_s3(provider: str = "seaweedfs", data_dir: Path = SEAWEEDFS_DIR
                      ) -> EmbeddedS3:
    """Start *provider* on 127.0.0.1 (any free port); SeaweedFS keeps data in *data_dir*."""
    if provider == "moto":
        return _start_moto()
    from amfs_sidecar.seaweedfs import start_seaweedfs

    server = start_seaweedfs(data_dir)
    return EmbeddedS3("seaweedfs", server.endpoint_url, server.identity.access_key,
                      server.identity.secret_key, server.data_dir, server)


def _start_moto() -> EmbeddedS3:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return EmbeddedS3("moto", f"http://{host}:{port}", MOTO_KEY, MOTO_KEY, None, server)


def embedded_settings(embedded: EmbeddedS3, base: S3Settings | None = None
                      ) -> tuple[S3Settings, bool]:
    """*base* (or defaults) pointed at the embedded server, and whether its bucket had
    to be created (False: it is there from an earlier run)."""
    settings = (base or S3Settings(bucket=EMBEDDED_BUCKET)).model_copy(update={
        "endpoint_url": embedded.endpoint_url,
        "aws_access_key_id": SecretStr(embedded.access_key),
        "aws_secret_access_key": SecretStr(embedded.secret_key),
    })
    client = boto3.client(
        "s3", endpoint_url=embedded.endpoint_url, region_name=settings.region_name,
        aws_access_key_id=embedded.access_key, aws_secret_access_key=embedded.secret_key,
    )
    try:
        client.head_bucket(Bucket=settings.bucket)
        return settings, False
    except ClientError:
        client.create_bucket(Bucket=settings.bucket)
        return settings, True
