#!/usr/bin/env bash
# The secrets compose.yaml mounts, made once into docker/secrets/: the bearer token, a small
# certificate authority (ca.pem is what clients trust) and the server's key and certificate for
# the names a client on this host uses (localhost, 127.0.0.1) plus any given as arguments:
#
#   docker/secrets.sh [NAME_OR_IP...]      e.g. docker/secrets.sh tutti.example.org 10.0.0.5
#
# tutti refuses a token file others may read, and the container runs as uid:gid 10001:10001, so
# the token and the key are mode 0640 with group 10001: the container reads them through its
# group, their owner (you: `tutti submit --token-file`) as owner, and nobody else. Changing the
# group needs root (the script prints the command when it is not root). An existing file is
# kept: delete docker/secrets/ to make new ones.
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
cd "$dir"
umask 077

[ -s tutti-token ] || openssl rand -hex 32 >tutti-token

if [ ! -s server.pem ]; then
    san="DNS:localhost,IP:127.0.0.1,DNS:tutti"
    for name in "$@"; do
        if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then san+=",IP:$name"; else san+=",DNS:$name"; fi
    done
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
        -subj "/CN=tutti CA" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=${1:-localhost}" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=%s\n' "$san" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
        -extfile server.ext -out server.pem 2>/dev/null
    rm -f server.csr server.ext
    chmod 0644 ca.pem server.pem
fi
chmod 0600 ca.key
chmod 0640 tutti-token server.key

if [ "$(id -u)" = 0 ]; then
    chgrp 10001 tutti-token server.key
else
    echo "now, as root: chgrp 10001 $dir/tutti-token $dir/server.key  (the container's group)" >&2
fi
echo "secrets in $dir: clients trust ca.pem and send tutti-token"
