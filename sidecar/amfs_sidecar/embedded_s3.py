"""``--embedded-s3``: moto's S3 server on loopback, for trying the sidecar on a laptop.

Everything lives in memory and is gone when the process exits; nothing here is
meant for a pod.
"""

from __future__ import annotations

from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from amfs_s3.config import S3Settings

EMBEDDED_BUCKET = "amfs-local"
# moto accepts any key; explicit ones keep boto3 from searching the credential chain.
EMBEDDED_KEY = "embedded"


@dataclass
class EmbeddedS3:
    server: ThreadedMotoServer
    endpoint_url: str

    def stop(self) -> None:
        self.server.stop()


def start_embedded_s3(host: str = "127.0.0.1", port: int = 0) -> EmbeddedS3:
    """Start moto's S3 server on *host*:*port* (0 = any free port)."""
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    return EmbeddedS3(server=server, endpoint_url=f"http://{bound_host}:{bound_port}")


def embedded_settings(embedded: EmbeddedS3, base: S3Settings | None = None) -> S3Settings:
    """*base* (or defaults) pointed at the embedded server, with its bucket created."""
    settings = (base or S3Settings(bucket=EMBEDDED_BUCKET)).model_copy(update={
        "endpoint_url": embedded.endpoint_url,
        "aws_access_key_id": SecretStr(EMBEDDED_KEY),
        "aws_secret_access_key": SecretStr(EMBEDDED_KEY),
    })
    client = boto3.client(
        "s3", endpoint_url=embedded.endpoint_url, region_name=settings.region_name,
        aws_access_key_id=EMBEDDED_KEY, aws_secret_access_key=EMBEDDED_KEY,
    )
    client.create_bucket(Bucket=settings.bucket)
    return settings

