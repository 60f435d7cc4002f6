#!/usr/bin/env bash
# Runs every kforge test. On Debian it first installs, when missing, what the tests use for real:
# the kernel's sign-file (linux-kbuild-6.1), the current kernel headers (whatever linux-headers-amd64
# depends on today), a compiler for the test modules, kmod's modinfo, openssl, xz, zstd, gzip,
# a real registry (docker-registry, htpasswd from apache2-utils, curl), independent image tools
# (skopeo, umoci), runc for buildkitd's OCI worker, and OpenSSL's headers for the build. Then it
# builds the pinned upstream peers (buildkitd, buildctl, etcd, kube-apiserver and friends, kwok)
# from the Go module proxy with tests/peers/build.sh, once: they are cached in
# ~/.cache/kforge-tests/bin and reused until a pin in tests/peers/versions.env changes.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  linux-kbuild-6.1 linux-headers-amd64 gcc make libc6-dev kmod openssl xz-utils zstd gzip util-linux
  docker-registry apache2-utils curl skopeo umoci docker.io mmdebstrap runc
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

# Style first: the code is formatted as rustfmt.toml says and clippy (the toolchain pinned in
# rust-toolchain.toml) has nothing to say.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Under CI a peer that cannot be built fails the run; elsewhere the tests that need it are ignored
# (cargo test lists them with the reason).
if ! tests/peers/build.sh; then
  if [ "${CI:-}" = true ]; then
    echo "tests/run.sh: the upstream peers could not be built (tests/peers/build.sh needs Go 1.26 or newer and the Go module proxy)" >&2
    exit 1
  fi
  echo "tests/run.sh: the upstream peers could not be built; the tests that need them are ignored" >&2
fi

exec cargo test --workspace --locked "$@"
