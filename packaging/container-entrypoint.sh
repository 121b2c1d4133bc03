#!/bin/sh
# Container entrypoint: a self-signed certificate when none is mounted,
# then the sluice command given (default: run).
set -e
tls=/etc/sluice/tls
if [ ! -e "$tls/cert.pem" ] && [ ! -e "$tls/key.pem" ] && [ -w "$tls" ]; then
    name=${SLUICE_HOSTNAME:-$(hostname)}
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$name" \
        -addext "subjectAltName=DNS:$name" \
        -keyout "$tls/key.pem" -out "$tls/cert.pem" >/dev/null 2>&1
    echo "sluice: generated a self-signed certificate for $name" >&2
fi
exec /usr/bin/sluice "$@"
