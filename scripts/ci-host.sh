#!/usr/bin/env bash
# On a GitHub-hosted runner (Ubuntu, before any container starts): make
# /dev/kvm usable by everyone (a udev rule, as the runner images document) and
# load vhost_vsock so /dev/vhost-vsock exists. Neither is required: without
# them hitless falls back to TCG and the userspace vsock daemon, and says so.
set -euo pipefail
echo 'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"' |
  sudo tee /etc/udev/rules.d/99-kvm4all.rules >/dev/null
sudo udevadm control --reload-rules
sudo udevadm trigger --name-match=kvm || true
sudo modprobe vhost_vsock || echo "ci-host: no vhost_vsock module (the userspace vsock daemon will be used)"
if [ -e /dev/vhost-vsock ]; then sudo chmod 0666 /dev/vhost-vsock; fi
ls -l /dev/kvm /dev/vhost-vsock 2>&1 || true
