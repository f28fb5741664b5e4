# Shared by scripts/dev and scripts/test.
export DEBIAN_FRONTEND=noninteractive
export PATH="/usr/local/go/bin:$HOME/go/bin:$PATH"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
T0=$(date +%s)

step() { printf '\n==> %s (%ss)\n' "$1" "$(( $(date +%s) - T0 ))"; }

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install installs the Debian packages that are missing.
apt_install() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		# Install without starting daemons (slapd, samba): the tests start
		# their own instances as processes.
		local rcd=/usr/sbin/policy-rc.d made=
		if [ ! -e "$rcd" ]; then
			printf '#!/bin/sh\nexit 101\n' | sudo_ tee "$rcd" >/dev/null && sudo_ chmod +x "$rcd" && made=1
		fi
		sudo_ apt-get update -qq
		sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
		if [ -n "$made" ]; then sudo_ rm -f "$rcd"; fi
	fi
}

# need_go checks for Go >= 1.26 (deskrun uses crypto/hpke).
need_go() {
	if ! command -v go >/dev/null; then
		echo "deskrun needs Go 1.26 or newer: install it from https://go.dev/dl into /usr/local/go" >&2
		exit 1
	fi
	local v; v=$(go env GOVERSION | sed 's/^go//')
	case "$v" in
	1.2[6-9]* | 1.[3-9]* | [2-9].*) ;;
	*) echo "deskrun needs Go 1.26 or newer; found $v" >&2; exit 1 ;;
	esac
}
