#!/usr/bin/env bash
# Checks the systemd units on the host, without a running systemd (PID 1 need not be systemd):
#   - `systemd-analyze verify` is silent for netsy.service alone and with the credentials drop-in;
#   - `systemd-analyze security --offline=true` exposure <= 2.0 for both;
#   - netsy.sysusers and netsy.tmpfiles apply cleanly to an empty root;
#   - every path and variable the unit sets is the one docs/design/0001-interfaces.md names.
# Prints "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"   # ok, ko, summary
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
S=$ROOT/systemd
MAX_EXPOSURE=2.0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A root holding the host's unit tree (for the targets netsy.service refers to), the units
# under test in /etc/systemd/system, and a stand-in executable at /usr/bin/netsy.
make_root() { # $1 = root, $2 = with drop-in (yes/no)
  mkdir -p "$1/usr/bin" "$1/usr/lib/systemd" "$1/etc/systemd/system"
  cp -a /usr/lib/systemd/system "$1/usr/lib/systemd/"
  install -m 0644 "$S/netsy.service" "$1/etc/systemd/system/netsy.service"
  if [ "$2" = yes ]; then
    mkdir -p "$1/etc/systemd/system/netsy.service.d"
    install -m 0644 "$S/credentials.conf" "$1/etc/systemd/system/netsy.service.d/credentials.conf"
  fi
  printf '#!/bin/sh\nexit 0\n' > "$1/usr/bin/netsy"
  chmod 0755 "$1/usr/bin/netsy"
}

echo "== systemd $(systemctl --version | head -1 | cut -d' ' -f2) units in systemd/"
for variant in plain credentials; do
  r=$work/$variant
  make_root "$r" "$([ $variant = credentials ] && echo yes || echo no)"
  out=$(cd "$r" && systemd-analyze verify --root="$r" netsy.service 2>&1)
  rc=$?
  if [ $rc -eq 0 ] && [ -z "$out" ]; then ok "verify ($variant) is clean"
  else ko "verify ($variant) rc=$rc: $out"; fi

  out=$(systemd-analyze security --offline=true --threshold=20 --root="$r" netsy.service 2>&1)
  rc=$?
  score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for netsy.service: \([0-9.]*\).*/\1/p')
  if [ $rc -eq 0 ] && [ -n "$score" ] && awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN{exit !(s<=m)}'; then
    ok "security ($variant): exposure $score <= $MAX_EXPOSURE"
  else
    ko "security ($variant): rc=$rc exposure '${score:-?}' (max $MAX_EXPOSURE)"
    printf '%s\n' "$out" | grep '✗' | head -20
  fi
done

# sysusers creates the user, then tmpfiles creates the directories with that group.
r=$work/empty
mkdir -p "$r/etc"
out=$(systemd-sysusers --root="$r" "$S/netsy.sysusers" 2>&1)
if [ $? -eq 0 ] && grep -q '^netsy:x:[0-9]*:[0-9]*:Netsy key-value server:/var/lib/netsy:/usr/sbin/nologin$' "$r/etc/passwd"
then ok "sysusers creates system user netsy ($(grep '^netsy:' "$r/etc/passwd" | cut -d: -f3))"
else ko "sysusers: $out $(cat "$r/etc/passwd" 2>/dev/null)"; fi
# (compare numbers: stat would name the gid after the host's group of that number)
gid=$(grep '^netsy:' "$r/etc/group" | cut -d: -f3)
out=$(systemd-tmpfiles --root="$r" --create "$S/netsy.tmpfiles" 2>&1)
if [ $? -eq 0 ] && [ "$(stat -c '%a %u %g' "$r/etc/netsy/certs/client" 2>/dev/null)" = "750 0 $gid" ]
then ok "tmpfiles creates /etc/netsy/certs/client 0750 root:netsy"
else ko "tmpfiles: $out $(stat -c '%a %u %g' "$r/etc/netsy/certs/client" 2>&1) (netsy gid ${gid:-?})"; fi

# The unit agrees with the interface document.
doc=$ROOT/docs/design/0001-interfaces.md
bad=
for line in $(grep -ho '^Environment=NETSY_[A-Z_]*=/[^ ]*' "$S/netsy.service"); do
  kv=${line#Environment=}; var=${kv%%=*}; val=${kv#*=}
  grep -q "\`$var\`" "$doc" || bad+=" $var(not in doc)"
  grep -q "\`$val\`" "$doc" || bad+=" $val(not in doc)"
done
grep -q '^ExecStart=/usr/bin/netsy$' "$S/netsy.service" && grep -q '`/usr/bin/netsy`' "$doc" || bad+=" ExecStart"
grep -q '^StateDirectory=netsy$' "$S/netsy.service" && grep -q '`/var/lib/netsy`' "$doc" || bad+=" StateDirectory"
if [ -z "$bad" ]; then ok "unit paths and variables match docs/design/0001-interfaces.md"
else ko "unit disagrees with 0001-interfaces.md:$bad"; fi

# ... and with the binary's own defaults (`netsy config defaults`), when a binary is at hand.
bin=${NETSY_BINARY:-$ROOT/dist/netsy}
if [ -x "$bin" ] && defaults=$("$bin" config defaults 2>/dev/null) && [ -n "$defaults" ]; then
  printf '%s' "$defaults" > "$work/defaults.json"
  out=$(python3 - "$S/netsy.service" "$S/credentials.conf" "$work/defaults.json" 2>&1 <<'PY'
import json, re, sys
d = json.load(open(sys.argv[3]))
unit = open(sys.argv[1]).read()
env = dict(re.findall(r"^Environment=(NETSY_[A-Z_]+)=(\S+)$", unit, re.M))
want = {"NETSY_CONFIG": "config", "NETSY_DATA_DIR": "data_dir", "NETSY_TLS_CA_CERT": "ca_cert",
        "NETSY_TLS_SERVER_CERT": "server_cert", "NETSY_TLS_SERVER_KEY": "server_key",
        "NETSY_TLS_CLIENT_CERT": "client_cert", "NETSY_TLS_CLIENT_KEY": "client_key"}
bad = [f"{v}={env.get(v)} (binary: {d['paths'][k]})" for v, k in want.items() if env.get(v) != d["paths"][k]]
if f"ExecStart={d['paths']['binary']}" not in unit:
    bad.append("ExecStart")
drop = open(sys.argv[2]).read()
bad += [f"{v} unknown to the binary" for v in re.findall(r"^Environment=(NETSY_[A-Z_]+)=", unit + drop, re.M)
        if v not in d["env"]]
print("; ".join(bad))
PY
)
  if [ -z "$out" ]; then ok "unit paths and variables match \`netsy config defaults\`"
  else ko "unit disagrees with \`netsy config defaults\`: $out"; fi
else
  echo "skip - no netsy binary with \`config defaults\` at $bin"
fi

summary
