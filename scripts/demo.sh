#!/usr/bin/env bash
# mvm's main job, end to end on this host: installs what is needed, then walks the tenant → pool → instance tour.
# Booting the instance as a real microVM arrives with the data plane; until then the tour stops at the records.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root=$(mvm_root)
cd "$root"

mvm_apt_install "${MVM_HOST_PACKAGES[@]}"
mvm_require_node
mvm_npm_install
mvm_build

data=$(mktemp -d /tmp/mvm-demo.XXXXXX)
trap 'rm -rf "$data"' EXIT
mvm() { echo "+ mvm $*" >&2; node "$root/bin/mvm" --data-dir "$data" "$@"; }

mvm tenant create acme --label team=demo
mvm pool create acme/web --vcpus 1 --mem-mib 256 --data-disk-mib 64
mvm pool scale acme/web --running 2
id=$(mvm instance create acme/web -o json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).instanceId))')
mvm instance create acme/web >/dev/null
mvm instance list
mvm instance info "acme/web/$id" -o yaml
mvm node info
