#!/usr/bin/env bash
# `make test`'s browser: the chat page's test (tests/test_serve_page.py) drives a real Chromium through Playwright,
# which is never allowed to download a browser of its own. Debian's `chromium` package is the one we use; this
# installs it when it is missing and this user may install packages (root, or sudo without a password), and
# otherwise says what to do. NATIVEVL_CHROMIUM names another Chromium or Chrome binary instead.
set -euo pipefail

if [ -n "${NATIVEVL_CHROMIUM:-}" ]; then
  [ -x "$NATIVEVL_CHROMIUM" ] && exit 0
  echo "make test: NATIVEVL_CHROMIUM=$NATIVEVL_CHROMIUM is not an executable file" >&2
  exit 1
fi
command -v chromium >/dev/null 2>&1 && exit 0

cannot_install() {
  echo "make test: the chat page's browser test needs Chromium, and $1." >&2
  echo "  Debian/Ubuntu: sudo apt-get install chromium; elsewhere: set NATIVEVL_CHROMIUM=/path/to/chromium" >&2
  exit 1
}
command -v apt-get >/dev/null 2>&1 || cannot_install "this system has no apt-get"
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  cannot_install "this user may not install packages (not root, no password-less sudo)"
fi
echo "make test: installing Debian's chromium (apt-get install chromium) for the chat page's browser test"
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "make test: apt-get installed no chromium command" >&2; exit 1; }
