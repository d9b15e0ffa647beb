"""amfs_sidecar: the AMFS memory of one pod over a Unix socket and loopback HTTP.

The S3 adapter it serves is :mod:`amfs_s3`; ``amfs_sidecar.client.SidecarAdapter``
is the AMFS SDK's way in from an agent's process.
"""

from __future__ import annotations

__version__ = "0.1.0"
