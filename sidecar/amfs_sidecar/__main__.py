"""``python -m amfs_sidecar``: the same as the ``amfs-sidecar`` console script."""

import sys

from amfs_sidecar.cli import main

sys.exit(main())
