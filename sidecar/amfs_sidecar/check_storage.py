"""``amfs-sidecar check-storage``: run :mod:`amfs_s3.storage_check` against an endpoint
and bucket, print the table, exit 0 when nothing failed and 1 otherwise."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

import boto3
from botocore.config import Config

from amfs_s3 import config as amfs_config
from amfs_s3.storage_check import Probe, passed, render_table, run_checks

COMMAND = "check-storage"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"amfs-sidecar {COMMAND}",
        description="Check that an S3 endpoint and bucket give AMFS what it relies on "
                    "(conditional writes, listings, consistency, key limits, clock). "
                    "Writes a few small objects under PREFIX.amfs-check/ and deletes them. "
                    "Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or boto3's chain.",
    )
    p.add_argument("--endpoint", default=env.get(amfs_config.ENV_ENDPOINT) or None,
                   metavar="URL", help="S3 endpoint URL (env AMFS_S3_ENDPOINT; default AWS S3)")
    p.add_argument("--bucket", default=env.get(amfs_config.ENV_BUCKET) or None,
                   required=not env.get(amfs_config.ENV_BUCKET),
                   help="bucket to check (env AMFS_S3_BUCKET)")
    p.add_argument("--region", default=env.get(amfs_config.ENV_REGION)
                   or amfs_config.DEFAULT_REGION, help="region (env AWS_DEFAULT_REGION)")
    p.add_argument("--prefix", default=env.get(amfs_config.ENV_PREFIX)
                   or amfs_config.DEFAULT_PREFIX,
                   help="key prefix the memory will use (env AMFS_S3_PREFIX)")
    return p


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = build_parser(env).parse_args(argv)
    client = boto3.session.Session().client(
        "s3", endpoint_url=args.endpoint, region_name=args.region,
        # From *env* when set there; otherwise (None) boto3's own chain.
        aws_access_key_id=env.get(amfs_config.ENV_ACCESS_KEY) or None,
        aws_secret_access_key=env.get(amfs_config.ENV_SECRET_KEY) or None,
        config=Config(connect_timeout=5, read_timeout=10,
                      retries={"mode": "standard", "total_max_attempts": 3}),
    )
    probe = Probe.create(client, args.bucket, args.prefix)
    # No credentials or no endpoint become the first check's FAIL row, not a traceback.
    results = run_checks(probe)
    where = args.endpoint or "AWS S3"
    print(render_table(results, heading=f"S3 storage check: {where}, bucket {args.bucket!r}, "
                                        f"prefix {args.prefix!r}\n"), flush=True)
    return 0 if passed(results) else 1
