#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian 12 machine of this kind:
# the apt packages in scripts/apt-packages.txt and the pinned venv in .venv.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t wanted < <(grep -v '^\s*#' scripts/apt-packages.txt | awk 'NF {print $1}' | sort -u)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "apt: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  echo "venv: installing requirements.txt into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi

# The modules drive nftables through the distribution's binding (python3-nftables,
# pure Python over libnftables.so.1); PyPI has no maintained one. Debian installs it
# for /usr/bin/python3 only: make the same files importable from the venv's Python.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
binding=$(/usr/bin/python3 -c 'import nftables, os; print(os.path.dirname(nftables.__file__))')
[[ -L $site/nftables && "$(readlink "$site/nftables")" == "$binding" ]] || ln -sfn "$binding" "$site/nftables"
