#!/usr/bin/env bash
# Register every SuperNode public key in KEY_DIR with the hub's SuperLink, which admits only
# registered SuperNodes (nexus hub serve --superlink-supernode-auth).
# Registration is a Control API call, and the hub's SuperLink serves its Control API on
# loopback inside the hub's container only (its public port, the Fleet gateway, refuses it):
# so `flwr` runs there, through EXEC (e.g. `docker compose -f deploy/compose.yaml exec -T hub`
# or `kubectl -n nexus exec -i statefulset/nexus-hub-driver -c hub --`; none: a hub on this machine),
# with the hub's own connection ("hub" in its SuperLink's FLWR_HOME). Keys travel on stdin.
#
# usage: register-supernodes.sh [--exec 'EXEC'] [--flwr-home DIR] [KEY_DIR]
#   KEY_DIR      supernode-*.pub from gen-certs.sh (default deploy/flower/generated)
#   --flwr-home  the hub SuperLink's FLWR_HOME as EXEC sees it (default /var/lib/nexus/flower/flwr-home)
set -euo pipefail

exec_prefix=()
flwr_home=/var/lib/nexus/flower/flwr-home
key_dir="$(dirname "$0")/generated"
while (($#)); do
    case "$1" in
        --exec) read -r -a exec_prefix <<<"$2"; shift 2 ;;
        --flwr-home) flwr_home="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "register-supernodes: unknown argument $1" >&2; exit 2 ;;
        *) key_dir="$1"; shift ;;
    esac
done
key_dir="$(cd "$key_dir" && pwd)"

shopt -s nullglob
keys=("$key_dir"/supernode-*.pub)
((${#keys[@]})) || { echo "register-supernodes: no supernode-*.pub in $key_dir" >&2; exit 2; }
# runs where the hub runs: the key arrives on stdin, into a private temp file
register='key=$(mktemp) && cat >"$key" && FLWR_HOME="$2" FLWR_TELEMETRY_ENABLED=0 flwr supernode register --name "$1" "$key" hub; status=$?; rm -f "$key"; exit $status'
for key in "${keys[@]}"; do
    name="$(basename "$key" .pub)"
    echo "register-supernodes: $name"
    "${exec_prefix[@]}" sh -c "$register" sh "$name" "$flwr_home" <"$key"
done
