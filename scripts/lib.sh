# Shared by the set-up scripts: install what mvm needs on a Debian (or, partly, Fedora) host.
# Installs only what is missing, so a prepared machine pays nothing.

mvm_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

mvm_sudo() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# mvm_apt_install PKG... — installs the Debian packages that are not installed yet.
mvm_apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  mvm_sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive mvm_sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

mvm_require_node() {
  if ! command -v node >/dev/null 2>&1; then
    mvm_apt_install nodejs npm
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 20 ]; then
    echo "mvm needs Node.js 20 or newer (found $(node --version)); install it and run this again" >&2
    exit 1
  fi
}

# npm ci only when node_modules is missing or older than the lockfile.
mvm_npm_install() {
  local root; root=$(mvm_root)
  if [ ! -d "$root/node_modules" ] || [ "$root/package-lock.json" -nt "$root/node_modules/.package-lock.json" ]; then
    (cd "$root" && npm ci --no-audit --no-fund)
  fi
}

# What a host needs to run microVMs with mvm: one list, shared with `mvm bootstrap`.
mapfile -t MVM_HOST_PACKAGES < <(grep -v '^#' "$(mvm_root)/packaging/debian-host-packages.txt" | grep -v '^$')
# Extra packages the tests use: real gRPC clients for interop, curl for the Connect protocol, git for buf breaking.
MVM_TEST_PACKAGES=(git curl python3-grpcio)

mvm_build() { (cd "$(mvm_root)" && npx tsc -p tsconfig.build.json); }
