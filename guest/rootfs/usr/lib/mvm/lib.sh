# Shared by mvm's guest scripts (sourced, not run). See docs/guest-contract.md.

MVM_RUN=/run/mvm
MVM_SECRETS="$MVM_RUN/secrets"
MVM_SECRETS_DEVICE=/dev/vdc
MVM_DATA_DEVICE=/dev/vdb

# The launcher reads these lines from the serial console, whoever runs the script (init, or a hook over ssh).
mvm_console() {
  if [ -c /dev/ttyS0 ]; then
    echo "$*" > /dev/ttyS0
  else
    echo "$*" > /dev/console
  fi
}

# Reports the failure where the launcher looks for it and ends the VM: a guest that cannot serve must not look alive.
mvm_fail() {
  mvm_console "MVM-FAILED $*"
  sync
  busybox poweroff -f
  exit 1
}

# Value of kernel argument $1 (`name=value`), empty when absent; the last occurrence wins, as in the kernel.
mvm_cmdline_arg() {
  value=
  set -f
  for arg in $(cat /proc/cmdline); do
    case "$arg" in
      "$1="*) value="${arg#"$1="}" ;;
    esac
  done
  set +f
  echo "$value"
}

# Instance IDs double as host names, so only what a host name may hold is accepted.
mvm_valid_instance_id() {
  case "$1" in
    "" | -* | *- | *[!a-z0-9-]*) return 1 ;;
  esac
  [ "${#1}" -le 63 ]
}

mvm_instance_id() {
  cat "$MVM_RUN/instance-id" 2>/dev/null
}

mvm_set_identity() {
  echo "$1" > "$MVM_RUN/instance-id"
  echo "$1" > /etc/hostname
  busybox hostname "$1"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$1" > /etc/hosts
}

# `"key": "value"` of a flat JSON object in file $2 (enough for identity.json, whose values are IDs).
mvm_json_string() {
  sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$2" | head -n 1
}

# True when block device $1 carries an ext2/3/4 superblock (magic 0xEF53 at byte 1080): the launcher attaches a
# blank placeholder as /dev/vdb when a pool has no data disk.
mvm_has_ext4() {
  [ -b "$1" ] || return 1
  magic="$(dd if="$1" bs=2 skip=540 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
  [ "$magic" = "53ef" ]
}

mvm_mount_secrets() {
  mkdir -p "$MVM_SECRETS"
  chmod 0700 "$MVM_SECRETS"
  [ -b "$MVM_SECRETS_DEVICE" ] || return 1
  # noload: the disk is read-only, so its journal must not be replayed.
  mount -t ext4 -o ro,noload,nosuid,nodev,noexec "$MVM_SECRETS_DEVICE" "$MVM_SECRETS"
}

mvm_install_authorized_keys() {
  [ -s "$MVM_SECRETS/authorized_keys" ] || return 1
  mkdir -p /root/.ssh
  chmod 0700 /root /root/.ssh
  cp "$MVM_SECRETS/authorized_keys" /root/.ssh/authorized_keys.new || return 1
  chmod 0600 /root/.ssh/authorized_keys.new
  mv -f /root/.ssh/authorized_keys.new /root/.ssh/authorized_keys
}

# Ports in LISTEN state (0A) are listed in /proc/net/tcp{,6} as hex `address:port`.
mvm_port_listening() {
  port_hex="$(printf '%04X' "$1")"
  grep -qE "^ *[0-9]+: [0-9A-F]+:$port_hex [0-9A-F]+:0000 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
