#!/usr/bin/env bash
# Checks the protobuf contract: lint, generated code up to date, no breaking change against the previous contract.
# Run from the repository root (CI does). Exits non-zero on the first failing check.
set -euo pipefail

cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"

if [[ ! -f buf.yaml || ! -d proto ]]; then
  echo "check-proto: run from the repository root (buf.yaml and proto/ not found in $(pwd))" >&2
  exit 2
fi

# Local binaries only (buf and the protoc-gen-es plugin it runs): `npx` would reach for the network when a package
# is missing, and CI installs node_modules anyway.
export PATH="$PWD/node_modules/.bin:$PATH"
buf_bin="node_modules/.bin/buf"
for tool in buf protoc-gen-es; do
  if [[ ! -x "node_modules/.bin/$tool" ]]; then
    echo "check-proto: node_modules/.bin/$tool not found: run npm ci first" >&2
    exit 2
  fi
done

echo "check-proto: buf lint"
"$buf_bin" lint

echo "check-proto: buf format"
# proto/ only: proto-vendor/ holds upstream gRPC files kept byte-for-byte as published.
if ! "$buf_bin" format proto --diff --exit-code; then
  echo "check-proto: proto/ is not formatted: run npx buf format -w" >&2
  exit 1
fi

echo "check-proto: gen/ is current (gen/mvm from proto/, gen/grpc from proto-vendor/)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# -o prefixes the template's `out: gen`, so the fresh copy lands in $scratch/gen and gen/ is never touched.
"$buf_bin" generate -o "$scratch"
# File names only: the embedded descriptors are single base64 lines that make a content diff unreadable.
if ! diff -r -q gen "$scratch/gen" >&2; then
  echo "check-proto: gen/ is stale: run npx buf generate" >&2
  exit 1
fi

echo "check-proto: buf breaking"
# The contract to compare with: main's when on another branch, the previous commit when on main itself (CI builds
# main in a fresh clone, where HEAD is main).
against=""
if head_sha="$(git rev-parse --verify -q HEAD 2>/dev/null)"; then
  main_sha=""
  for candidate in main origin/main; do
    if main_sha="$(git rev-parse --verify -q "$candidate^{commit}" 2>/dev/null)"; then
      break
    fi
    main_sha=""
  done
  if [[ -z "$main_sha" || "$main_sha" == "$head_sha" ]]; then
    against="$(git rev-parse --verify -q "HEAD~1^{commit}" 2>/dev/null || true)"
    [[ -n "$against" ]] || echo "check-proto: skipping buf breaking: HEAD has no previous commit"
  else
    against="$main_sha"
  fi
else
  echo "check-proto: skipping buf breaking: the repository has no commit yet"
fi

if [[ -n "$against" ]]; then
  if ! git cat-file -e "$against:proto" 2>/dev/null || ! git cat-file -e "$against:buf.yaml" 2>/dev/null; then
    echo "check-proto: skipping buf breaking: commit ${against:0:12} has no proto/ (or no buf.yaml)"
  else
    git_dir="$(git rev-parse --git-dir)"
    echo "check-proto: comparing with commit ${against:0:12}"
    # The proto module only: the contract is ours, and proto-vendor/ (upstream gRPC files) may be missing there.
    "$buf_bin" breaking proto --against "${git_dir}#ref=${against},subdir=proto"
  fi
fi

echo "check-proto: ok"
