#!/usr/bin/env bash
# The programs some tests drive for real, from Debian's packages: redis-server (cache, rate
# limits, quotas), nginx (the load-balancer config) and chromium + a CJK font (the web page's
# browser tests; Playwright drives the system browser, as browser downloads are not possible).
# Installs only what is missing; does nothing where apt-get is not available.
set -euo pipefail

need=""
command -v redis-server >/dev/null || need="$need redis-server"
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need="$need nginx"
[ -x /usr/bin/chromium ] || need="$need chromium"
fc-list 2>/dev/null | grep -qi "wenquanyi\|wqy" || need="$need fonts-wqy-microhei"
[ -n "$need" ] || exit 0
if ! command -v apt-get >/dev/null; then
  echo "test-deps: apt-get not found; the tests that need$need will be skipped" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends $need; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends $need
fi
# Debian starts these services on install; the tests start their own on free ports.
$SUDO service redis-server stop >/dev/null 2>&1 || true
$SUDO service nginx stop >/dev/null 2>&1 || true
