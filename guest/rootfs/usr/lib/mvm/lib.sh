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

# The helpers below use shell builtins only, and set a variable instead of printing: the wake hook runs while a
# woken instance waits for it, and under software emulation every process started in the guest costs tens of ms.

# Sets MVM_VALUE to the string value of key $1 in the flat JSON object in file $2 (empty when absent).
mvm_json_value() {
  MVM_VALUE=
  while IFS= read -r mvm_line || [ -n "$mvm_line" ]; do
    case "$mvm_line" in
      *"\"$1\""*)
        mvm_rest="${mvm_line#*\"$1\"}"
        mvm_rest="${mvm_rest#*:}"
        case "$mvm_rest" in
          *\"*) mvm_rest="${mvm_rest#*\"}"; MVM_VALUE="${mvm_rest%%\"*}" ;;
        esac
        return 0
        ;;
    esac
  done < "$2"
}

# Sets MVM_VALUE to the instance ID this guest runs as (empty when unknown).
mvm_current_instance_id() {
  MVM_VALUE=
  [ -r "$MVM_RUN/instance-id" ] && IFS= read -r MVM_VALUE < "$MVM_RUN/instance-id"
  return 0
}

# True when something is mounted on $1.
mvm_is_mounted() {
  while read -r mvm_device mvm_mountpoint mvm_rest; do
    [ "$mvm_mountpoint" = "$1" ] && return 0
  done < /proc/mounts
  return 1
}

# True when block device $1 carries an ext2/3/4 superblock (magic 0xEF53 at byte 1080): the launcher attaches a
# blank placeholder as /dev/vdb when a pool has no data disk.
mvm_has_ext4() {
  [ -b "$1" ] || return 1
  magic="$(dd if="$1" bs=2 skip=540 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
  [ "$magic" = "53ef" ]
}

mvm_mount_secrets() {
  [ -d "$MVM_SECRETS" ] || mkdir -p -m 0700 "$MVM_SECRETS"
  [ -b "$MVM_SECRETS_DEVICE" ] || return 1
  # noload: the disk is read-only, so its journal must not be replayed.
  mount -t ext4 -o ro,noload,nosuid,nodev,noexec "$MVM_SECRETS_DEVICE" "$MVM_SECRETS"
}

mvm_install_authorized_keys() {
  [ -s "$MVM_SECRETS/authorized_keys" ] || return 1
  [ -d /root/.ssh ] || { mkdir -p /root/.ssh && chmod 0700 /root /root/.ssh; } || return 1
  # Copied with builtins under a private umask (the file is 0600 from its first byte), then renamed into place so
  # that the SSH server never reads half a file.
  umask 077
  mvm_copied=0
  while IFS= read -r mvm_line || [ -n "$mvm_line" ]; do
    printf '%s\n' "$mvm_line"
  done < "$MVM_SECRETS/authorized_keys" > /root/.ssh/authorized_keys.new && mvm_copied=1
  umask 022
  [ "$mvm_copied" = 1 ] || return 1
  mv -f /root/.ssh/authorized_keys.new /root/.ssh/authorized_keys
}

# Ports in LISTEN state (0A) are listed in /proc/net/tcp{,6} as hex `address:port`.
mvm_port_listening() {
  port_hex="$(printf '%04X' "$1")"
  grep -qE "^ *[0-9]+: [0-9A-F]+:$port_hex [0-9A-F]+:0000 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
