#!/usr/bin/env bash
# Generate, at deploy time, the Flower TLS material and the SuperNode authentication keys:
#   ca.crt / ca.key          a private CA (the key stays on the deployer's machine)
#   server.pem / server.key  the hub's Flower certificate (its Fleet gateway and loopback SuperLink), signed by the CA
#   supernode-region-N       each SuperNode's ECDSA P-384 key (OpenSSH format, as Flower wants)
#   supernode-region-N.pub   its public key, registered with register-supernodes.sh
# Nothing here is ever committed: the default output dir is git-ignored.
#
# usage: gen-certs.sh [--out DIR] [--regions N] [--san DNS:name|IP:addr]... [--force]
set -euo pipefail

out="$(cd "$(dirname "$0")" && pwd)/generated"
regions=3
force=0
# every name the SuperLink is reached by: compose service, k8s Service (short and FQDN), loopback
sans=(DNS:superlink DNS:nexus-superlink DNS:nexus-superlink.nexus.svc DNS:nexus-superlink.nexus.svc.cluster.local DNS:localhost IP:127.0.0.1)

while (($#)); do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --regions) regions="$2"; shift 2 ;;
        --san) sans+=("$2"); shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "gen-certs: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$regions" =~ ^[1-9][0-9]*$ ]] || { echo "gen-certs: --regions must be a positive integer" >&2; exit 2; }
if [[ -e "$out/ca.key" && "$force" != 1 ]]; then
    echo "gen-certs: $out already holds a CA; pass --force to replace it (every SuperNode must then trust the new one)" >&2
    exit 2
fi

# The directory is private; the files in it are readable because compose bind-mounts single
# files into containers that run as a non-root user with another uid.
mkdir -p "$out"
chmod 0700 "$out"
umask 022
san_list=$(IFS=,; echo "${sans[*]}")

openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key" 2>/dev/null
openssl req -x509 -new -key "$out/ca.key" -sha256 -days 825 -subj "/CN=nexus-flower-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.crt"
chmod 0600 "$out/ca.key"

openssl ecparam -name prime256v1 -genkey -noout -out "$out/server.key" 2>/dev/null
openssl req -new -key "$out/server.key" -subj "/CN=nexus-superlink" -out "$out/server.csr"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days 825 -sha256 -out "$out/server.pem" \
    -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$san_list") \
    2>/dev/null
rm -f "$out/server.csr" "$out/ca.srl"
chmod 0644 "$out/server.key"

for ((region = 1; region <= regions; region++)); do
    key="$out/supernode-region-$region"
    rm -f "$key" "$key.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "nexus-supernode-region-$region" -f "$key"
    chmod 0644 "$key"
done

echo "gen-certs: wrote CA, SuperLink certificate (SANs: $san_list) and $regions SuperNode key(s) to $out"
