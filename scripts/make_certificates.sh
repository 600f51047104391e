#!/usr/bin/env bash
# Certificates and keys for a local demo of a secured deployment (never for production: the CA key sits beside
# the certificates it signs).
#   scripts/make_certificates.sh DIR [PARTY ...]
# DIR/ca.crt           self-signed CA: SuperNodes and `fedlit deploy` trust the SuperLink through it
# DIR/server.{key,crt} the SuperLink's TLS key and certificate (for localhost and 127.0.0.1), signed by the CA
# DIR/PARTY{,.pub}     each party's SuperNode authentication key pair (EC P-384, OpenSSH format): the private key
#                      stays with the party, the public key is registered with `flwr supernode register`
set -euo pipefail
dir=${1:?usage: $0 DIR [PARTY ...]}
shift
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:4096 -sha256 -days 30 -nodes -subj "/CN=fedlit demo CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:4096 -sha256 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\n" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 \
    -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext ca.srl
for party in "$@"; do
    rm -f "$party" "$party.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "$party" -f "$party"
done
chmod 600 ./*.key "$@" 2>/dev/null || true
echo "certificates and keys in $dir"
