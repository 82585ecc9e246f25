#!/bin/sh
# cluster-ca.sh: a cluster CA (made once), and a certificate from it for each
# node host named on the command line, as in its node name (name@HOST):
#   sh cluster-ca.sh 10.0.0.5 10.0.0.6
# Keep ca.key with whoever signs; give each node ca.pem, HOST.pem and HOST.key.
set -eu
umask 077
if [ ! -f ca.key ]; then
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout ca.key -out ca.pem -days 3650 -subj "/CN=phoenix cluster CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
fi
for host in "$@"; do
    case "$host" in
        *[!0-9.]*) case "$host" in *:*) san="IP:$host" ;; *) san="DNS:$host" ;; esac ;;
        *) san="IP:$host" ;;
    esac
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$host.key" -out "$host.csr" -subj "/CN=$host"
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$host.ext"
    openssl x509 -req -in "$host.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days 825 -extfile "$host.ext" -out "$host.pem"
    rm "$host.csr" "$host.ext"
done
