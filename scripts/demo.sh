#!/usr/bin/env bash
# mvm's main job, end to end on this host: installs what is needed, then boots a real microVM and runs a command in
# it. The data plane (bridge, TAP, VMM) lives in a network namespace of its own, deleted at the end, so the demo
# never touches the host's network. Needs root (bridges, TAPs, cgroups).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root=$(mvm_root)
cd "$root"

if [ "$(id -u)" -ne 0 ]; then echo "the demo needs root: run it with sudo" >&2; exit 1; fi
mvm_apt_install "${MVM_HOST_PACKAGES[@]}"
mvm_require_node
mvm_npm_install
mvm_build

data=$(mktemp -d /tmp/mvm-demo.XXXXXX)
export MVM_NETNS="mvm-demo-$$"
# Built images are cached across demo runs (the first build takes about a minute).
export MVM_IMAGE_CACHE="$root/.cache/images"
cleanup() {
  node "$root/bin/mvm" --data-dir "$data" tenant destroy acme --force >/dev/null 2>&1 || true
  ip netns delete "$MVM_NETNS" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
ip netns add "$MVM_NETNS"
ip -n "$MVM_NETNS" link set lo up

mvm() { echo "+ mvm $*" >&2; node "$root/bin/mvm" --data-dir "$data" "$@"; }

mvm doctor || true
mvm tenant create acme --label team=demo
mvm pool create acme/web --vcpus 1 --mem-mib 256 --data-disk-mib 64
mvm pool build acme/web
id=$(mvm instance create acme/web -o json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).instanceId))')
mvm instance start "acme/web/$id"
mvm instance exec "acme/web/$id" -- sh -c 'echo "hello from $(hostname)"; uname -sr; ip -4 -o addr show eth0; df -h /data | tail -1'
mvm instance stats "acme/web/$id"
mvm instance stop "acme/web/$id"
mvm instance list
