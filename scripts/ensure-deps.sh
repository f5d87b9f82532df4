#!/usr/bin/env bash
# Installs what imds-guard's tests and demo need on a fresh Debian machine (as root):
# Debian packages only when a command is missing, then the npm dependencies (npm ci).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "imds-guard: the tests and the demo create network namespaces and users: run as root" >&2
  exit 1
fi

# command -> Debian package that provides it
declare -A wanted=(
  [iptables]=iptables
  [iptables-legacy]=iptables
  [nft]=nftables
  [ip]=iproute2
  [setpriv]=util-linux
  [useradd]=passwd
  [getent]=libc-bin
  [python3]=python3
  [promtool]=prometheus
  [systemd-analyze]=systemd
  [systemd-notify]=systemd
  [curl]=curl
  [debootstrap]=debootstrap
  [systemd-nspawn]=systemd-container
)
missing=()
for cmd in "${!wanted[@]}"; do
  if ! PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH" command -v "$cmd" >/dev/null 2>&1; then
    missing+=("${wanted[$cmd]}")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "imds-guard: installing Debian packages: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [ "${IMDSG_SKIP_NPM_CI:-}" != "1" ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
