#!/bin/sh
# The agent's hardened service around an installed virtual environment: the system user,
# the private data directory, the configuration, shell completion and the systemd unit.
# Used by install.sh (from a checkout) and by the offline bundle's installer:
#
#   setup-service.sh PREFIX UNIT_FILE EXAMPLE_CONFIG
#
# PREFIX holds venv/ with edgefleet-agent installed.
set -eu
PREFIX=$1
UNIT_SOURCE=$2
EXAMPLE=$3
DATA_DIR=/var/lib/edgefleet-agent
UNIT=/etc/systemd/system/edgefleet-agent.service

echo "== user and directories"
id edgefleet >/dev/null 2>&1 || \
    useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home --shell /usr/sbin/nologin edgefleet
install -d -o edgefleet -g edgefleet -m 0700 "$DATA_DIR"

echo "== configuration"
if [ ! -e "$DATA_DIR/agent.toml" ]; then
    install -o edgefleet -g edgefleet -m 0600 "$EXAMPLE" "$DATA_DIR/agent.toml"
fi

echo "== shell completion"
if [ -d /etc/bash_completion.d ]; then
    "$PREFIX/venv/bin/edgefleet-agent" completion bash > /etc/bash_completion.d/edgefleet-agent
fi

echo "== systemd unit"
install -D -m 0644 "$UNIT_SOURCE" "$UNIT"
if [ "$PREFIX" != /opt/edgefleet ]; then
    sed -i "s#/opt/edgefleet/venv#$PREFIX/venv#" "$UNIT"
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

echo "installed: enroll as user edgefleet, then"
echo "  systemctl enable --now edgefleet-agent"
