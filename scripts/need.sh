#!/usr/bin/env bash
# need.sh COMMAND:PACKAGE... installs, from Debian's packages, the package of
# every COMMAND that is not on PATH (or, for an absolute path, of every file
# that does not exist). It needs root (or sudo) only when something is missing.
set -euo pipefail
missing=()
for pair in "$@"; do
	case ${pair%%:*} in
	/*) [ -e "${pair%%:*}" ] || missing+=("${pair#*:}") ;;
	*) command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}") ;;
	esac
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
