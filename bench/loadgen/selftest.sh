#!/usr/bin/env bash
# Build loadgen and exercise it against testserver.py (HTTP/1.1 over mutual TLS)
# on 127.0.0.1, a free port. Everything it starts is stopped on exit.
# Usage: bench/loadgen/selftest.sh [seconds-per-throughput-run, default 2]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-2}
make -s -C "$here" >/dev/null
lg=$here/loadgen

tmp=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true # status 143: it was terminated, as intended
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"

# --- certificates: a CA, a server cert for IP 127.0.0.1, clients signed by the CA, one rogue
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.crt -days 1 -subj /CN=selftest-ca 2>/dev/null
sign() { # name CN [extfile]
    openssl req $ec -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
        -out "$1.crt" ${3:+-extfile "$3"} 2>/dev/null
}
printf 'subjectAltName=IP:127.0.0.1\n' > san.ext
sign server 127.0.0.1 san.ext
for i in 1 2 3; do sign client$i client$i; done
openssl req -x509 $ec -keyout rogue.key -out rogue.crt -days 1 -subj /CN=rogue 2>/dev/null
printf '# cert key\nclient1.crt client1.key\nclient2.crt client2.key\nclient3.crt client3.key\n' > certs.txt

# --- server
python3 "$here/testserver.py" --cert server.crt --key server.key --ca ca.crt \
    --port-file port 2>server.log &
server_pid=$!
for _ in $(seq 50); do [ -s port ] && break; sleep 0.1; done
[ -s port ] || { echo "test server did not start:"; cat server.log; exit 1; }
url=https://127.0.0.1:$(cat port)
auth=(--cacert ca.crt --cert client1.crt --key client1.key)

fails=0
# check NAME PYTHON-EXPR-ON-j -- loadgen args...   (j = the --json output as a dict)
check() {
    local name=$1 expr=$2; shift 3
    local out rc=0
    out=$("$lg" --json "$@" 2>err.txt) || rc=$?
    if python3 -c 'import json,sys; j=json.loads(sys.argv[1]); rc=int(sys.argv[3]); sys.exit(0 if eval(sys.argv[2]) else 1)' \
        "${out:-null}" "$expr" "$rc" 2>/dev/null; then
        printf 'PASS  %-22s %s\n' "$name" "$(summary "$out")"
    else
        printf 'FAIL  %-22s rc=%s %s %s\n' "$name" "$rc" "$out" "$(cat err.txt)"
        fails=$((fails + 1))
    fi
}
summary() {
    python3 -c 'import json,sys; j=json.loads(sys.argv[1]); e={k:v for k,v in j["errors"].items() if v}
print("%d req, %.0f rps, p50 %s ms, p99 %s ms, cpu %.0f%%, reconnects %d, errors %s" % (j["requests"],
      j["rps"], j["p50_ms"], j["p99_ms"], j["cpu_pct"], j["reconnects"], e or 0))' "$1" 2>/dev/null || true
}
expect_fail() { # NAME EXPECTED-RC -- args
    local name=$1 want=$2 rc=0; shift 3
    "$lg" "$@" >out.txt 2>err.txt || rc=$?
    if [ "$rc" = "$want" ] && [ "$(wc -l <err.txt)" = 1 ]; then
        printf 'PASS  %-22s rc=%s: %s\n' "$name" "$rc" "$(cat err.txt)"
    else
        printf 'FAIL  %-22s rc=%s (want %s): %s\n' "$name" "$rc" "$want" "$(cat err.txt)"
        fails=$((fails + 1))
    fi
}
stats() { curl -s "${auth[@]}" "$url/stats"; }

ok='rc == 0 and j["requests"] > 0 and j["errors"]["total"] == 0'
check keep-alive  "$ok and j[\"reconnects\"] == 0" -- --url "$url/ok" "${auth[@]}" -d "$secs" --warmup 0.5 \
    --body 'grant_type=client_credentials' -H 'Content-Type: application/x-www-form-urlencoded'
before=$(stats)
check new-conn    "$ok and j[\"handshake_p50_ms\"] > 0 and j[\"handshakes\"] >= j[\"requests\"]" \
    -- --url "$url/ok" "${auth[@]}" -d "$secs" --new-conn
check new-conn-tls1.2 "$ok and j[\"tls_version\"] == \"TLSv1.2\"" -- --url "$url/ok" "${auth[@]}" -d 1 --new-conn --tls1.2
python3 -c 'import json,sys; a,b=json.loads(sys.argv[1]),json.loads(sys.argv[2]); sys.exit(b["resumed"] != a["resumed"])' \
    "$before" "$(stats)" && echo "PASS  no-resumption          server saw 0 resumed sessions" \
    || { echo "FAIL  no-resumption"; fails=$((fails + 1)); }
check chunked     "$ok" -- --url "$url/chunked" "${auth[@]}" -d 1 --expect-status 200
check chunked-1MiB "$ok" -- --url "$url/big" "${auth[@]}" -d 1 -c 4 --expect-status 200
check interim-100 "$ok" -- --url "$url/interim" "${auth[@]}" -d 1 --expect-status 200
check head        "$ok" -- --url "$url/ok" "${auth[@]}" -d 1 --method HEAD
check conn-close  "$ok and j[\"reconnects\"] >= j[\"requests\"] - 8" -- --url "$url/close" "${auth[@]}" -d 1 -c 8
check body-to-eof "$ok and j[\"reconnects\"] >= j[\"requests\"] - 8" -- --url "$url/eof" "${auth[@]}" -d 1 -c 8
check new-conn-chunked "$ok" -- --url "$url/chunked" "${auth[@]}" -d 1 -c 8 --new-conn
check count-n     "$ok and j[\"requests\"] == 500" -- --url "$url/ok" "${auth[@]}" -n 500 -c 7
check status-errors "rc == 0 and abs(j[\"errors\"][\"status\"] - j[\"requests\"] / 4) <= 8 and j[\"ok\"] > 0" \
    -- --url "$url/flaky" "${auth[@]}" -d 1 -c 8 --expect-status 200
check timeouts    "j[\"errors\"][\"timeout\"] >= 2" -- --url "$url/slow" "${auth[@]}" -d 1.2 -c 2 --timeout 0.5
check protocol-errors "rc == 1 and j[\"errors\"][\"protocol\"] > 0" -- --url "$url/garbage" "${auth[@]}" -d 0.5 -c 2
before=$(stats)
check cert-list   "$ok" -- --url "$url/ok" --cacert ca.crt --cert-list certs.txt -n 300 -c 3 --new-conn
python3 -c 'import json,sys; a,b=json.loads(sys.argv[1]),json.loads(sys.argv[2])
d={k: b["clients"][k]-a["clients"].get(k,0) for k in ("client1","client2","client3")}
print("PASS " if all(90 <= v <= 110 for v in d.values()) else "FAIL ", "cert-round-robin      ", d)
sys.exit(not all(90 <= v <= 110 for v in d.values()))' "$before" "$(stats)" || fails=$((fails + 1))
# {client_id} in the body: each connection sends its own certificate's client_id (the CN here)
printf 'client1.crt client1.key client1\nclient2.crt client2.key client2 # comment\nclient3.crt client3.key client3\n' > ids.txt
idbody='grant_type=client_credentials&client_id={client_id}&x={client_id}'
check client-id-body "$ok and j[\"ok\"] == 300" -- --url "$url/client-id" --cacert ca.crt --cert-list ids.txt \
    -n 300 -c 3 --body "$idbody" --expect-status 200
check client-id-new-conn "$ok" -- --url "$url/client-id" --cacert ca.crt --cert-list ids.txt \
    -d 1 -c 4 --new-conn --body "$idbody" --expect-status 200
check client-id-single "$ok" -- --url "$url/client-id" "${auth[@]}" --client-id client1 -n 50 -c 2 \
    --body "$idbody" --expect-status 200
check client-id-wrong "rc == 0 and j[\"errors\"][\"status\"] == j[\"requests\"] > 0" \
    -- --url "$url/client-id" "${auth[@]}" --client-id client2 -n 20 -c 2 --body "$idbody" --expect-status 200
expect_fail client-id-missing 2 -- --url "$url/ok" --cacert ca.crt --cert-list certs.txt --body "$idbody"
expect_fail rogue-client-cert 1 -- --url "$url/ok" --cacert ca.crt --cert rogue.crt --key rogue.key -d 1
expect_fail untrusted-server 1 -- --url "$url/ok" --cacert rogue.crt --cert client1.crt --key client1.key -d 1
expect_fail refused      1 -- --url "https://127.0.0.1:1/" --insecure -d 1
expect_fail bad-option   2 -- --url "$url/ok" --frobnicate

echo
"$lg" --url "$url/ok" "${auth[@]}" -d "$secs" --body 'grant_type=client_credentials'
echo
"$lg" --url "$url/ok" "${auth[@]}" -d "$secs" --body 'grant_type=client_credentials' --new-conn
echo
if [ "$fails" = 0 ]; then echo "selftest: all checks passed"; else echo "selftest: $fails check(s) FAILED"; exit 1; fi
