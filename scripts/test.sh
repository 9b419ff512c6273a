#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine and runs every check CI runs; ends with `N passed, N failed`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root=$(mvm_root)
cd "$root"

mvm_apt_install "${MVM_HOST_PACKAGES[@]}" "${MVM_TEST_PACKAGES[@]}"
mvm_require_node
mvm_npm_install

echo "== contract: buf lint, gen/ current, buf breaking"
bash scripts/check-proto.sh
echo "== dependency direction"
node scripts/check-deps.mjs
echo "== type check"
npx tsc -p tsconfig.json --noEmit
echo "== build"
mvm_build

echo "== tests"
mkdir -p reports
rm -f reports/vitest.json
status=0
MVM_SKIP_BUILD=1 npx vitest run --reporter=default --reporter=json --outputFile.json=reports/vitest.json || status=$?
node scripts/test-summary.mjs reports/vitest.json || status=1
exit "$status"
