#!/usr/bin/env bash
# install.sh installs Debian's chromium, which e2e/browsertest drives headless through
# chromedp, unless /usr/bin/chromium is already there. It needs root and Debian's package
# mirror (CI has both). Concurrent callers are serialised with flock.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
	echo "tools/chromium/install.sh: already installed: $(/usr/bin/chromium --version 2>/dev/null)"
	exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
	echo "tools/chromium/install.sh: /usr/bin/chromium is missing; install Debian's chromium as root: apt-get install chromium" >&2
	exit 1
fi
exec 9>/tmp/.micro-chromium-install.lock
flock -w 600 9
if [[ ! -x /usr/bin/chromium ]]; then
	start=$(date +%s)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
	echo "tools/chromium/install.sh: installed $(/usr/bin/chromium --version 2>/dev/null) in $(( $(date +%s) - start ))s"
fi
