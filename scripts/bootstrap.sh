#!/usr/bin/env bash
# Installs what building netsy needs on a fresh Debian/Ubuntu machine: protoc (the etcd API
# types and our own protos are generated at build time). Idempotent.
set -euo pipefail
if ! command -v protoc >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler >/dev/null
fi
