#!/bin/sh
# One image, two programs: the first argument picks which, the rest are its own.
#   /app/entrypoint.sh operator --all-namespaces
#   /app/entrypoint.sh sidecar --config /etc/amfs/config/amfs.yaml
set -eu

usage() {
    echo "usage: entrypoint.sh sidecar|operator [ARGS...]" >&2
    echo "  sidecar   runs amfs-sidecar (the memory API in an agent pod)" >&2
    echo "  operator  runs amfs-operator (AMFSMemory reconciler and injection webhook)" >&2
}

if [ "$#" -eq 0 ]; then
    usage
    exit 64
fi

program="$1"
shift
case "$program" in
    sidecar) exec amfs-sidecar "$@" ;;
    operator) exec amfs-operator "$@" ;;
    -h|--help|help) usage; exit 0 ;;
    *)
        echo "entrypoint.sh: unknown program '$program'" >&2
        usage
        exit 64
        ;;
esac
