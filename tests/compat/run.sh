#!/usr/bin/env bash
# The client compatibility suite: installs the Kafka clients users run (kafka-python and
# aiokafka from PyPI, pinned, in a virtualenv under target/; kcat, and Go with sarama and
# confluent-kafka-go, from Debian when missing),
# starts a single-node strata broker (a debug build, local directory as object store) with a
# SASL_SSL and a mutual-TLS listener beside its plaintext one (certificates made by
# tests/compat/pki.py, a SCRAM user made with stratactl) and runs every client through the
# same scenarios (tests/compat/scenarios.py), printing the client x scenario matrix. Exits
# non-zero when a scenario fails.
#
#   tests/compat/run.sh                    # all clients
#   CLIENTS=aiokafka,sarama tests/compat/run.sh   # some
#   BIN=target/release/strata tests/compat/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS=${CLIENTS:-kafka-python,aiokafka,kcat,sarama,confluent-kafka-go}
VENV=target/compat-venv

echo "== clients"
if [[ $CLIENTS == *kcat* ]] && ! command -v kcat >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kcat
fi
# The Go clients are Debian's packages (Go 1.19, sarama, confluent-kafka-go on librdkafka),
# built in GOPATH mode.
if [[ $CLIENTS == *sarama* || $CLIENTS == *confluent* ]]; then
  if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/Shopify/sarama ] ||
     [ ! -d /usr/share/gocode/src/github.com/confluentinc/confluent-kafka-go ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      golang-go golang-github-shopify-sarama-dev \
      golang-github-confluentinc-confluent-kafka-go-dev librdkafka-dev pkg-config
  fi
  mkdir -p target
  # cgo prints deprecation warnings for Debian's zstd binding: shown only on failure.
  built=$(GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$PWD/target/go-cache" \
    go build -o target/compat-go tests/compat/go/main.go 2>&1) || { echo "$built" >&2; exit 1; }
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/compat/requirements.txt

echo "== broker"
if [ -z "${BIN:-}" ]; then
  cargo build -q --bin strata --bin stratactl
  BIN=target/debug/strata
fi
CTL=${CTL:-$(dirname "$BIN")/stratactl}
WORK=$(mktemp -d)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
SECURE_PORT=$(free_port)
MTLS_PORT=$(free_port)
OAUTH_PORT=$(free_port)
PKI="$WORK/pki"
"$VENV/bin/python" tests/compat/pki.py "$PKI"
"$BIN" --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
  --set 'controller.listen="127.0.0.1:0"' \
  --set 'http.listen=""' \
  --set "object_store.url=\"file://$WORK/objects\"" \
  --set "kafka.listeners=[{name=\"SASL_SSL\",listen=\"127.0.0.1:$SECURE_PORT\"},{name=\"SSL\",listen=\"127.0.0.1:$MTLS_PORT\",client_auth=\"required\"},{name=\"SASL_PLAINTEXT\",listen=\"127.0.0.1:$OAUTH_PORT\"}]" \
  --set "kafka.tls.cert_file=\"$PKI/broker.pem\"" \
  --set "kafka.tls.key_file=\"$PKI/broker.key\"" \
  --set "kafka.tls.client_ca_file=\"$PKI/ca.pem\"" \
  --set 'kafka.sasl.mechanisms=["SCRAM-SHA-512","SCRAM-SHA-256","PLAIN","OAUTHBEARER"]' \
  --set "kafka.sasl.oauthbearer.jwks_file=\"$PKI/jwks.json\"" \
  --set 'kafka.sasl.oauthbearer.expected_issuer="https://compat.example"' \
  --set 'kafka.sasl.oauthbearer.expected_audience=["strata"]' \
  >"$WORK/strata.log" 2>&1 &
PID=$!
for _ in $(seq 300); do
  grep -q "serving Kafka clients" "$WORK/strata.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "serving Kafka clients" "$WORK/strata.log" || {
  echo "strata did not start" >&2; cat "$WORK/strata.log" >&2; exit 1
}

STRATA_USER_PASSWORD=compat-secret "$CTL" -b "127.0.0.1:$PORT" user create compat >/dev/null
STRATA_USER_PASSWORD=compat-secret "$CTL" -b "127.0.0.1:$PORT" user create compat \
  --mechanism SCRAM-SHA-256 >/dev/null
cat >"$WORK/security.json" <<JSON
{"sasl_ssl": "127.0.0.1:$SECURE_PORT", "mtls": "127.0.0.1:$MTLS_PORT",
 "ca": "$PKI/ca.pem", "client_cert": "$PKI/client.pem", "client_key": "$PKI/client.key",
 "stranger_cert": "$PKI/stranger.pem", "stranger_key": "$PKI/stranger.key",
 "user": "compat", "password": "compat-secret",
 "oauth": "127.0.0.1:$OAUTH_PORT", "token_key": "$PKI/token.key",
 "stranger_token_key": "$PKI/stranger-token.key",
 "issuer": "https://compat.example", "audience": "strata"}
JSON

echo "== scenarios"
status=0
"$VENV/bin/python" tests/compat/scenarios.py --bootstrap "127.0.0.1:$PORT" \
  --clients "$CLIENTS" --go-binary target/compat-go --json target/compat-matrix.json \
  --security "$WORK/security.json" ||
  status=$?
if [ $status -ne 0 ]; then
  echo "== the broker's log (last 60 lines)"
  tail -60 "$WORK/strata.log"
fi
exit $status
