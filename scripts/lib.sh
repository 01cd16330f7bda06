# Shared by the scripts: install Debian packages a fresh machine lacks.

# ensure CMD PACKAGE...: installs PACKAGEs with apt-get unless CMD is on PATH.
ensure() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo "== installing $* (for $cmd)"
  local sudo=
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install $*" >&2; return 1; }
    sudo=sudo
  fi
  # Debian's etcd-server would start a system etcd on 2379; a policy-rc.d that exits
  # 101 keeps any package's service from starting during the install.
  local added_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  if [ -z "${SUBSTATION_APT_UPDATED:-}" ]; then
    $sudo apt-get update -qq
    SUBSTATION_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
  if [ -n "$added_policy" ]; then
    $sudo rm -f /usr/sbin/policy-rc.d
  fi
  command -v "$cmd" >/dev/null 2>&1
}
