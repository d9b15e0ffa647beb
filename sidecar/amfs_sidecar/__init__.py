"""amfs-k8s: the AMFS S3 adapter, the sidecar daemon and its client."""

from __future__ import annotations

from amfs_sidecar.adapter import S3Adapter

__all__ = ["S3Adapter"]
__version__ = "0.1.0"


def _register_with_amfs_sdk() -> None:
    """Make ``layers.primary.adapter: s3`` in an AMFS YAML file build this adapter.

    The SDK's factory only fills in its own S3 adapter when nothing holds the
    name, so registering first is enough; without the SDK there is nothing to do.
    """
    try:
        from amfs.factory import register_adapter
    except ImportError:
        return
    register_adapter("s3", S3Adapter)


_register_with_amfs_sdk()
