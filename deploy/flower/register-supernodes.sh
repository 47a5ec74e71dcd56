#!/usr/bin/env bash
# Register every SuperNode public key in KEY_DIR with a SuperLink started with
# --enable-supernode-auth (only registered SuperNodes may then connect).
# Runs Flower's own CLI (`flwr`, installed with the project) from a throw-away FLWR_HOME.
#
# usage: register-supernodes.sh SUPERLINK_HOST:PORT [KEY_DIR]
#   KEY_DIR defaults to deploy/flower/generated (ca.crt and supernode-*.pub from gen-certs.sh)
set -euo pipefail

superlink="${1:?usage: register-supernodes.sh SUPERLINK_HOST:PORT [KEY_DIR]}"
key_dir="$(cd "${2:-$(dirname "$0")/generated}" && pwd)"
[ -f "$key_dir/ca.crt" ] || { echo "register-supernodes: $key_dir/ca.crt is missing (run gen-certs.sh)" >&2; exit 2; }
command -v flwr >/dev/null || { echo "register-supernodes: flwr is not on PATH (activate the project's venv)" >&2; exit 2; }

FLWR_HOME="$(mktemp -d)"
export FLWR_HOME FLWR_TELEMETRY_ENABLED=0
trap 'rm -rf "$FLWR_HOME"' EXIT
cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "nexus"

[superlink.nexus]
address = "$superlink"
root-certificates = "$key_dir/ca.crt"
TOML

shopt -s nullglob
keys=("$key_dir"/supernode-*.pub)
((${#keys[@]})) || { echo "register-supernodes: no supernode-*.pub in $key_dir" >&2; exit 2; }
for key in "${keys[@]}"; do
    name="$(basename "$key" .pub)"
    echo "register-supernodes: $name"
    flwr supernode register --name "$name" "$key" nexus
done
