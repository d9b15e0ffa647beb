"""amfs-operator: AMFSMemory custom resources reconciled into configuration and credentials.

Layers (see ``shared/STYLE.md``): :mod:`.spec` (typed model) → :mod:`.resources`
(pure builders) → :mod:`.reconcile` (desired vs. observed) → :mod:`.handlers`
(kopf wiring only). :mod:`.kube` and :mod:`.s3` are the two outside worlds.
"""

from __future__ import annotations

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION"]

GROUP = "amfs.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AMFSMemory"
PLURAL = "amfsmemories"
