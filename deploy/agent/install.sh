#!/bin/sh
# Install the edgefleet agent on Raspberry Pi OS / Debian (arm64, armhf or amd64) as a
# hardened systemd service. Run as root from a checkout (or an unpacked release):
#
#   sudo deploy/agent/install.sh
#   sudo -u edgefleet /opt/edgefleet/venv/bin/edgefleet-agent \
#       --data-dir /var/lib/edgefleet-agent enroll --controller ctl.example:7444 \
#       --token TOKEN --root-fingerprint FINGERPRINT
#   sudo systemctl enable --now edgefleet-agent
#
# Building llama-cpp-python takes 20-40 minutes on a Raspberry Pi 4; pip keeps the wheel.
set -eu

SOURCE=$(cd "$(dirname "$0")/../.." && pwd)
PREFIX=${PREFIX:-/opt/edgefleet}
DATA_DIR=/var/lib/edgefleet-agent  # the service's (setup-service.sh)

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it creates a user, $PREFIX and a systemd unit)" >&2
    exit 1
fi

echo "== packages"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-dev build-essential cmake pkg-config ca-certificates

install -d -m 0755 "$PREFIX"

echo "== virtual environment (llama.cpp is compiled here)"
# llama.cpp build flags: ARM boards build for the CPU they run on (NEON, dotprod on a
# Pi 5); on x86-64 build for x86-64-v3 (see docs/architecture.md, "A portable llama.cpp").
case "$(uname -m)" in
    x86_64) export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" ;;
    aarch64|armv7l|armv6l) export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" ;;
esac
python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --quiet --upgrade pip
"$PREFIX/venv/bin/pip" install --quiet "$SOURCE"

sh "$SOURCE/deploy/agent/setup-service.sh" "$PREFIX" \
    "$SOURCE/deploy/systemd/edgefleet-agent.service" "$SOURCE/deploy/agent/agent.toml.example"
