#!/usr/bin/env bash
# Start each reference peer on 127.0.0.1 (free ports), check it with curl, stop it.
#
#   bench/peers/selftest.sh            # needs bench/peers/node-oidc/setup.sh to have run
#
# Checks: node-oidc issues a token to a self_signed_tls_client_auth client, its introspection
# shows cnf.x5t#S256 equal to the SHA-256 of that client's certificate, a wrong or missing
# certificate and a wrong secret get 401 invalid_client, client_secret_basic works; bare_hypercorn
# answers both routes with the fixed bodies and no-store/no-cache headers in both TLS modes, and
# in verify mode refuses a certificate that is not in CLIENT_CA. Everything it starts is stopped
# on exit. Ends with "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
    rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0
check() { # name, then a command that must succeed
    local name="$1"; shift
    if "$@"; then passed=$((passed + 1)); echo "ok    $name"
    else failed=$((failed + 1)); echo "FAIL  $name"; fi
}
wait_ready() { # outfile pid -> prints URL
    for _ in $(seq 100); do
        if grep -q '^ready ' "$1" 2>/dev/null; then awk '/^ready /{print $2; exit}' "$1"; return 0; fi
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
stop() { kill "$1"; for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; return 1; }
json() { "$PYTHON" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }

"$PYTHON" "$here/gen_clients.py" "$work/a" --count 3 --real 2 2>/dev/null
"$PYTHON" "$here/gen_clients.py" "$work/b" --count 1 2>/dev/null   # not registered anywhere
A="$work/a"; CA=(--cacert "$A/server.crt")
C0=(--cert "$A/certs/mtls-000000.crt" --key "$A/certs/mtls-000000.key")
C1=(--cert "$A/certs/mtls-000001.crt" --key "$A/certs/mtls-000001.key")
CB=(--cert "$work/b/certs/mtls-000000.crt" --key "$work/b/certs/mtls-000000.key")
x5t0=$(head -1 "$A/clients.jsonl" | json "d['x5t#S256']")

# --- node-oidc ---------------------------------------------------------------------------------
PORT=0 TLS_CERT="$A/server.crt" TLS_KEY="$A/server.key" CLIENTS_FILE="$A/node-oidc-clients.json" \
    node "$here/node-oidc/server.js" >"$work/node.out" 2>"$work/node.err" &
pid=$!; pids+=("$pid")
if url=$(wait_ready "$work/node.out" "$pid"); then
    check "node-oidc: ready line" true
    r=$(curl -sS "${CA[@]}" "${C0[@]}" -d 'grant_type=client_credentials&client_id=mtls-000000' "$url/oauth2/token")
    tok=$(echo "$r" | json "d['access_token']" 2>/dev/null)
    check "node-oidc: mTLS client gets a token" test -n "$tok"
    check "node-oidc: token response is Bearer, 3600 s" \
        test "$(echo "$r" | json "(d['token_type'], d['expires_in'])")" = "('Bearer', 3600)"
    i=$(curl -sS "${CA[@]}" -u bench-basic:bench-basic-secret -d "token=$tok" "$url/oauth2/introspect")
    check "node-oidc: introspection active, cnf.x5t#S256 = SHA-256 of the cert" \
        test "$(echo "$i" | json "(d['active'], d['cnf']['x5t#S256'])")" = "(True, '$x5t0')"
    code() { curl -sS -o /dev/null -w '%{http_code}' "${CA[@]}" "$@"; }
    check "node-oidc: another client's certificate -> 401" \
        test "$(code "${C1[@]}" -d 'grant_type=client_credentials&client_id=mtls-000000' "$url/oauth2/token")" = 401
    check "node-oidc: unregistered certificate -> 401" \
        test "$(code "${CB[@]}" -d 'grant_type=client_credentials&client_id=mtls-000000' "$url/oauth2/token")" = 401
    check "node-oidc: no certificate -> 401" \
        test "$(code -d 'grant_type=client_credentials&client_id=mtls-000000' "$url/oauth2/token")" = 401
    check "node-oidc: second mTLS client gets a token" \
        test "$(code "${C1[@]}" -d 'grant_type=client_credentials&client_id=mtls-000001' "$url/oauth2/token")" = 200
    check "node-oidc: client_secret_basic -> 200" \
        test "$(code -u bench-basic:bench-basic-secret -d grant_type=client_credentials "$url/oauth2/token")" = 200
    check "node-oidc: wrong secret -> 401" \
        test "$(code -u bench-basic:wrong -d grant_type=client_credentials "$url/oauth2/token")" = 401
    check "node-oidc: stops on SIGTERM" stop "$pid"
else
    check "node-oidc: ready line" false; cat "$work/node.err"
fi

# --- bare_hypercorn ----------------------------------------------------------------------------
for mode in verify accept-any; do
    TLS_MODE=$mode PORT=0 TLS_CERT="$A/server.crt" TLS_KEY="$A/server.key" \
        CLIENT_CA="$A/client-certs.pem" "$here/bare_hypercorn/run.sh" >"$work/bare.out" 2>"$work/bare.err" &
    pid=$!; pids+=("$pid")
    if url=$(wait_ready "$work/bare.out" "$pid"); then
        check "bare($mode): ready line" true
        h=$(curl -sS --http1.1 -D - "${CA[@]}" "${C0[@]}" -d 'grant_type=client_credentials' "$url/oauth2/token")
        check "bare($mode): fixed token" grep -q '"access_token":"bare-hypercorn' <<<"$h"
        check "bare($mode): no-store, no-cache" \
            test "$(grep -ciE '^(cache-control: no-store|pragma: no-cache)' <<<"$h")" = 2
        check "bare($mode): introspection route" grep -q '"active":true' \
            <(curl -sS --http1.1 "${CA[@]}" "${C0[@]}" -d 'token=x' "$url/oauth2/introspect")
        if [ "$mode" = verify ]; then
            check "bare(verify): certificate outside CLIENT_CA is refused" \
                test "$(curl -s --http1.1 -o /dev/null -w '%{http_code}' "${CA[@]}" "${CB[@]}" -d x "$url/oauth2/token")" = 000
        else
            check "bare(accept-any): any certificate is accepted" \
                test "$(curl -s --http1.1 -o /dev/null -w '%{http_code}' "${CA[@]}" "${CB[@]}" -d x "$url/oauth2/token")" = 200
        fi
        check "bare($mode): stops on SIGTERM" stop "$pid"
    else
        check "bare($mode): ready line" false; cat "$work/bare.err"
    fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
