#!/usr/bin/env bash
# Installs the real-OpenStack test bed into a cache folder, once:
#   CACHE/ironic, CACHE/nova   venvs with ironic 39 and nova 34 from PyPI,
#                              pinned by the constraints files beside this script
#   CACHE/tls                  a CA and a server certificate for 127.0.0.1-127.0.0.63
#   CACHE/db                   empty schemas (ironic.db, nova.db, nova_api.db) that
#                              each test copies instead of migrating again
# Idempotent: each part has a marker and is skipped when present. Concurrent
# callers (parallel tests, xtask) serialise on a lock. Progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${1:?usage: install.sh CACHE_DIR}"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

say() { echo "    test bed: $*" >&2; }

# The Python the venvs are built from: the machine's python3, which must have venv.
python="${LEAKMON_TESTBED_PYTHON:-python3}"

venv() {
    local name="$1" package="$2"
    local dir="$cache/$name" marker="$cache/$name/.leakmon-installed"
    local want
    want="$package $(sha256sum "$here/constraints-$name.txt" | cut -c1-16)"
    if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
        say "$package already installed in $dir"
        return
    fi
    say "installing $package into $dir (first time: about 30 s and 400 MB)..."
    rm -rf "$dir"
    "$python" -m venv "$dir"
    local started=$SECONDS
    "$dir/bin/pip" install --quiet --disable-pip-version-check --progress-bar off \
        -c "$here/constraints-$name.txt" "$package" >&2
    echo "$want" >"$marker"
    say "$package installed in $((SECONDS - started)) s"
}

tls() {
    local dir="$cache/tls"
    if [[ -f "$dir/server.pem" ]]; then
        say "TLS material already in $dir"
        return
    fi
    say "making a CA and a server certificate in $dir"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    (
        cd "$dir.tmp"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=leakmon test CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        # Each test serves Ironic on its own loopback address.
        local sans="DNS:localhost"
        for i in $(seq 1 63); do sans="$sans,IP:127.0.0.$i"; done
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$sans" >ext.cnf
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile ext.cnf -out server.pem 2>/dev/null
        rm -f server.csr ext.cnf ca.srl
    )
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# Fills a config template: @DIR@ and @URL@.
render() {
    sed -e "s|@DIR@|$2|g" -e "s|@URL@|$3|g" -e "s|@IP@|127.0.0.1|g" -e "s|@TLS@||" -e "s|@CAFILE@||" "$here/$1"
}

schemas() {
    local dir="$cache/db" marker="$cache/db/.leakmon-installed"
    local want
    want="$(cat "$cache/ironic/.leakmon-installed" "$cache/nova/.leakmon-installed" | sha256sum | cut -c1-16)"
    if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
        say "database schemas already in $dir"
        return
    fi
    say "creating empty Ironic and nova database schemas in $dir (about 10 s)"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/locks"
    render ironic.conf.in "$dir.tmp" "" >"$dir.tmp/ironic.conf"
    "$cache/ironic/bin/ironic-dbsync" --config-file "$dir.tmp/ironic.conf" create_schema >/dev/null 2>&1
    render nova.conf.in "$dir.tmp" "http://127.0.0.1:6385" >"$dir.tmp/nova.conf"
    "$cache/nova/bin/nova-manage" --config-file "$dir.tmp/nova.conf" api_db sync >/dev/null 2>&1
    "$cache/nova/bin/nova-manage" --config-file "$dir.tmp/nova.conf" db sync >/dev/null 2>&1
    (cd "$dir.tmp" && rm -rf locks ironic.conf nova.conf ./*.log)
    echo "$want" >"$dir.tmp/.leakmon-installed"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

venv ironic ironic==39.0.0
venv nova nova==34.0.0
tls
schemas
say "ready in $cache"
