#!/usr/bin/env bash
# The `tools` suite of ./tests/run: every tool the suites need is installed, and none is used
# without being listed.
#   1. runs the install scripts (tests/install.sh, which runs scripts/bootstrap.sh and
#      mkosi/tools.sh); `--installed` skips this when the caller (tests/run) has just run them;
#   2. for each line of tests/tools.txt: the tool is there (its probe passes) and the script
#      named as its installer names it;
#   3. scans the scripts the suites run (tests/**/*.sh and *.py, tests/run, bench/*.sh,
#      mkosi/*.sh, packaging/*.sh and *.py, scripts/*.sh, and Command::new("...") in the Rust
#      tests) with tests/tools/scan.py: every external command found must be in tests/tools.txt
#      or in BASE below (Debian's Essential set, which every Debian system has).
# Prints "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"   # ok, ko, skip, summary
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
LIST=tests/tools.txt
finish() { summary; exit; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Base-system commands: Debian's Essential packages (coreutils, findutils, grep, sed, tar,
# gzip, diffutils, bash, dash, util-linux, debianutils, hostname, dpkg) and mawk.
BASE="
arch b2sum base32 base64 basename basenc cat chcon chgrp chmod chown chroot cksum comm cp
csplit cut date dd df dir dircolors dirname du env expand expr factor false fmt fold groups
head hostid id install join link ln logname ls md5sum mkdir mkfifo mknod mktemp mv nice nl
nohup nproc numfmt od paste pathchk pr printenv ptx readlink realpath rm rmdir runcon seq
sha1sum sha224sum sha256sum sha384sum sha512sum shred shuf sleep sort split stat stdbuf stty
sum sync tac tail tee timeout touch tr true truncate tsort tty uname unexpand uniq unlink
users vdir wc who whoami yes
find xargs grep egrep fgrep sed tar gzip gunzip zcat diff cmp diff3 sdiff bash sh dash
flock getopt ionice logger more nsenter renice rev script setsid taskset unshare whereis
which run-parts savelog tempfile hostname dpkg dpkg-query awk mawk
"

# --- 1. install ---------------------------------------------------------------------------------
if [ "${1:-}" = --installed ]; then
  echo "== install: done by the caller"
else
  echo "== install (tests/install.sh)"
  if timeout 3600 ./tests/install.sh >"$work/install.log" 2>&1; then ok "tests/install.sh"
  else tail -20 "$work/install.log"; ko "tests/install.sh (exit $?)"; fi
fi

# --- 2. every listed tool is there ----------------------------------------------------------------
echo "== $LIST"
listed=" "
while read -r name pkg installer used probe; do
  case $name in ''|'#'*) continue;; esac
  listed+="${name//,/ } "
  if [ -z "$used" ]; then ko "$LIST: line for '$name' has fewer than 4 columns"; continue; fi
  case $installer in
    suite:*)
      skip "$name ($pkg): ${installer#suite:} installs it when it runs"
      continue;;
    image) ;;
    *)
      p=${pkg#*:}; p=${p%%=*}
      if [ ! -f "$installer" ]; then ko "$name: installer '$installer' does not exist"; continue; fi
      if ! grep -qF -- "$p" "$installer" && ! grep -qw -- "${name%%,*}" "$installer"; then
        ko "$name: $installer names neither '$p' nor '${name%%,*}'"; continue
      fi;;
  esac
  if [ -n "$probe" ]; then
    timeout 600 bash -c "$probe" >"$work/probe.log" 2>&1; rc=$?
  else
    rc=0
    for n in ${name//,/ }; do command -v "$n" >/dev/null || rc=1; done
  fi
  if [ "$rc" -eq 0 ]; then ok "$name ($pkg, from $installer; used by $used)"
  else ko "$name ($pkg) missing though $installer should provide it${probe:+: $(head -c 200 "$work/probe.log" | tr '\n' ' ')}"; fi
done < "$LIST"

# --- 3. nothing unlisted is used --------------------------------------------------------------------
echo "== commands the scripts call"
scan=(python3 tests/tools/scan.py)
# The scanner itself, on a sample with one command in each place it looks.
cat >"$work/sample.sh" <<'SH'
x=$(alpha-cmd --flag | beta_cmd) && timeout 5 gamma.cmd "$y" 2>&1 || env A=1 delta-cmd
case $x in a|b) epsilon-cmd;; *) :;; esac
f() { zeta-cmd; }; f; arr=(not-a-cmd); "$VAR" arg; ./local/script.sh; command -v not-used
python3 - <<'PY'
heredoc-body-is-not-shell
PY
SH
printf 'subprocess.run(["eta-cmd", "x"])\n' >"$work/sample.py"
printf 'Command::new("theta-cmd")\n' >"$work/sample.rs"
got=$("${scan[@]}" "$work/sample.sh" "$work/sample.py" "$work/sample.rs" | cut -f1 | sort -u | tr '\n' ' ')
want="alpha-cmd beta_cmd delta-cmd env epsilon-cmd eta-cmd gamma.cmd python3 theta-cmd timeout zeta-cmd "
if [ "$got" = "$want" ]; then ok "scan.py finds the commands in a sample (shell, Python, Rust)"
else ko "scan.py on the sample: got '$got', want '$want'"; fi

mapfile -t files < <({
  ls tests/run .ci/run bench/*.sh bench/go/*.sh mkosi/*.sh packaging/*.sh packaging/*.py scripts/*.sh \
    tests/*.rs tests/support/*.rs tests/common/*.rs tests/tls_support/*.rs 2>/dev/null
  find tests -name '*.sh' -o -name '*.py' -not -path tests/tools/scan.py
} | sort -u)
if ! "${scan[@]}" "${files[@]}" >"$work/used.tsv"; then
  ko "scan.py failed"; finish
fi
unknown=0
while read -r cmd; do
  case " $listed $BASE " in *[[:space:]]"$cmd"[[:space:]]*) continue;; esac
  unknown=$((unknown + 1))
  where=$(awk -F'\t' -v c="$cmd" '$1 == c {print $2}' "$work/used.tsv")
  ko "'$cmd' is used but not in $LIST (nor a base-system command): $(echo "$where" | head -3 | tr '\n' ' ')"
done < <(cut -f1 "$work/used.tsv" | sort -u)
[ "$unknown" -eq 0 ] && ok "$(cut -f1 "$work/used.tsv" | sort -u | wc -l) commands in ${#files[@]} scripts: each is in $LIST or a base-system command"

finish
