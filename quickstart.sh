#!/usr/bin/env bash
# sclp quick start: installs everything (Debian packages, a Python venv with the
# project) and then runs one job:
#   ./quickstart.sh demo   - the VM-to-VM demo (two namespaced "VMs" over VXLAN-over-SCLP)
#   ./quickstart.sh test   - lint, type check and the whole test suite
# Needs root (it installs Debian packages and builds network namespaces).
set -euo pipefail
cd "$(dirname "$0")"

job=${1:-}
case "$job" in
  demo|test) ;;
  *) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (sudo $0 $job): it installs Debian packages and creates network namespaces" >&2
  exit 1
fi

DEB_PACKAGES=(python3 python3-venv python3-pip iproute2 iputils-ping iperf3 tshark ethtool nftables procps tinc
  qemu-system-x86 busybox-static  # the virtio-net test guest (sclp guest build)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients  # tests/vm/test_libvirt.py (its own libvirtds)
  etcd-server openssl  # the cluster registry of the demo and tests (sclp demo --hosts N); openssl: the TLS test's certificates
  podman runc containernetworking-plugins  # containers through sclp-cni (docs/containers.md)
  frr  # BGP EVPN interop tests (docs/evpn.md): zebra and bgpd with a kernel VXLAN VTEP
  linux-perf  # perf: benchmarks/profile.py (docs/performance.md)
  gcc python3-dev)  # SCLP_MYPYC=1: the per-frame modules compiled by mypyc, and their test
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.sclp-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing sclp and its Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev,plot]'
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
# The lab's virtio-net test guest (Debian cloud kernel + busybox initramfs) for the
# tests in tests/vm; skipped when its cache (/var/cache/sclp/guest or
# $SCLP_GUEST_CACHE) is current.
echo "==> guest"; sclp guest build

case "$job" in
  demo)
    sclp selfcheck && exec sclp demo
    ;;
  test)
    echo "==> ruff"; ruff check src tests benchmarks hatch_build.py; ruff format --check src tests benchmarks hatch_build.py
    echo "==> mypy"; mypy
    echo "==> pytest"; exec pytest -q
    ;;
esac
