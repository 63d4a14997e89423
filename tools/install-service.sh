#!/usr/bin/env bash
# Installs dreamd as a systemd service: the release binary, a config in /etc/dreamd, a `dreamd`
# system user owning /var/lib/dreamd, and assets/dreamd.service. Run from the repository root as
# root (or with sudo). Re-running it upgrades the binary and unit and keeps an existing config.
#
#   sudo tools/install-service.sh            # build, install, enable and start
#   sudo tools/install-service.sh --no-start # install only
set -euo pipefail
cd "$(dirname "$0")/.."

start=1
[[ "${1:-}" == "--no-start" ]] && start=0
[[ $(id -u) -eq 0 ]] || { echo "install-service.sh: run as root (sudo)" >&2; exit 1; }
command -v systemctl >/dev/null || { echo "install-service.sh: systemctl not found" >&2; exit 1; }

if [[ ! -x target/release/dreamd ]]; then
    echo "building the release binary"
    sudo -u "${SUDO_USER:-root}" cargo build --release
fi
install -m 0755 target/release/dreamd /usr/local/bin/dreamd
install -d -m 0755 /usr/local/share/doc/dreamd
install -m 0644 README.md /usr/local/share/doc/dreamd/README.md

id dreamd >/dev/null 2>&1 || useradd --system --home-dir /var/lib/dreamd --shell /usr/sbin/nologin dreamd
install -d -o dreamd -g dreamd -m 0755 /var/lib/dreamd /var/lib/dreamd/models
install -d -m 0755 /etc/dreamd
if [[ ! -e /etc/dreamd/dreamd.toml ]]; then
    /usr/local/bin/dreamd init /etc/dreamd/dreamd.toml
    echo "wrote /etc/dreamd/dreamd.toml (edit it; dreamd reloads safe keys live)"
else
    echo "keeping /etc/dreamd/dreamd.toml"
fi
/usr/local/bin/dreamd run --config /etc/dreamd/dreamd.toml --check

install -m 0644 assets/dreamd.service /etc/systemd/system/dreamd.service
systemctl daemon-reload
if [[ $start -eq 1 ]]; then
    systemctl enable --now dreamd.service
    systemctl --no-pager status dreamd.service || true
else
    echo "installed; start with: systemctl enable --now dreamd.service"
fi
