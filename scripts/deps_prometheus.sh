#!/bin/sh
# Debian's prometheus and promtool, for `nearby run --prometheus` and the tests.
# The package's own service must not start (nor stay enabled): the stack runs
# its own instance, with its own config and data folder, on its own port.
set -eu
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "prometheus is missing: run this as root, or: sudo apt-get install prometheus" >&2
  exit 1
fi
policy=/usr/sbin/policy-rc.d
made=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# no service starts while packages are installed\nexit 101\n' > "$policy"
  chmod +x "$policy"
  made=1
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
if [ -n "$made" ]; then
  rm -f "$policy"
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
