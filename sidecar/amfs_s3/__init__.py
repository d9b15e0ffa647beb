"""amfs_s3: AMFS memory entries as versioned JSON objects in any S3-compatible bucket.

``from amfs_s3 import S3Adapter`` as the AMFS docs show; the AMFS SDK's factory
finds ``amfs_s3.adapter.S3Adapter`` for ``adapter: s3`` in an AMFS YAML file by
itself. This package imports nothing from the sidecar or the operator.
"""

from __future__ import annotations

from amfs_s3.adapter import S3Adapter

__all__ = ["S3Adapter"]
__version__ = "0.1.0"
