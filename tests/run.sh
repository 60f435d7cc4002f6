#!/usr/bin/env bash
# Runs every kforge test. On Debian it first installs, when missing, what the tests use for real:
# the kernel's sign-file (linux-kbuild-6.1), the current kernel headers (whatever linux-headers-amd64
# depends on today), a compiler for the test modules, kmod's modinfo, openssl, xz, zstd, gzip,
# a real registry (docker-registry, htpasswd from apache2-utils, curl), independent image tools
# (skopeo, umoci), and OpenSSL's headers for the build.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  linux-kbuild-6.1 linux-headers-amd64 gcc make libc6-dev kmod openssl xz-utils zstd gzip util-linux
  docker-registry apache2-utils curl skopeo umoci docker.io mmdebstrap
  libssl-dev pkg-config
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "tests/run.sh: installing ${missing[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

exec cargo test --workspace --locked "$@"
