#!/usr/bin/env bash
# Makes the certificates a seg1b cluster authenticates with (Dask's mutual TLS):
#
#   sudo bash cluster/make-certs.sh cluster/certs [DAYS]
#
# writes, into the folder (created, never overwritten), what the cluster mounts:
#   ca.pem                          the cluster's own certificate authority
#   scheduler.pem scheduler-key.pem the scheduler's certificate and key
#   worker.pem worker-key.pem       every worker's
#   job.pem job-key.pem             the job's (the client that submits work)
# and, beside the folder, FOLDER-ca-key.pem: the CA's key, which only signs. It stays off the
# cluster (the folder is what gets mounted); keep it to sign more certificates, or delete it.
#
# Every party presents a certificate signed by ca.pem and accepts only such certificates, so a
# client without one, or with one from another authority, is refused before it can send any
# task. Run as root, the keys are given to uid 10001 (the image's user) with mode 0600, as the
# Compose file's read-only bind mount needs; otherwise they stay the caller's, mode 0600.
# Kubernetes: `kubectl create secret generic seg1b-tls --from-file=ca.pem=… ` (cluster/README.md).
set -euo pipefail
out=${1:?usage: make-certs.sh FOLDER [DAYS]}
out=${out%/}
days=${2:-365}
ca_key=$out-ca-key.pem
if [[ -e $out/ca.pem || -e $ca_key ]]; then
  echo "make-certs: $out/ca.pem or $ca_key exists; remove them to make new certificates" >&2
  exit 2
fi
mkdir -p "$out"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=seg1b cluster CA" -keyout "$ca_key" -out "$out/ca.pem" 2>/dev/null
for role in scheduler worker job; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=seg1b $role" \
    -keyout "$out/$role-key.pem" -out "$out/$role.csr" 2>/dev/null
  openssl x509 -req -in "$out/$role.csr" -CA "$out/ca.pem" -CAkey "$ca_key" -CAcreateserial \
    -days "$days" -out "$out/$role.pem" 2>/dev/null
  rm "$out/$role.csr"
done
rm -f "$out/ca.srl"
chmod 0644 "$out"/ca.pem "$out"/scheduler.pem "$out"/worker.pem "$out"/job.pem
chmod 0755 "$out"
if [[ $(id -u) == 0 ]]; then
  chown 10001:10001 "$out"/scheduler-key.pem "$out"/worker-key.pem "$out"/job-key.pem
fi
echo "make-certs: $out: ca.pem, and a certificate and key for scheduler, worker and job (valid $days days);"
echo "make-certs: the CA's key is $ca_key (keep it off the cluster)"
