#!/usr/bin/env bash
# Run a molecule scenario of anycast.edge (default: "default") on this machine.
#
# Does everything a fresh machine of the project's kind needs besides the venv and
# scripts/apt-packages.txt: builds the container images its platforms use if missing, points podman
# at scripts/containers.conf, makes a snapshot of the working tree importable as
# anycast.edge (build/molecule/ansible_collections/anycast/edge), runs
# `molecule <command> -s <scenario>` there and always removes the scenario's
# containers afterwards.
#
# usage: scripts/molecule-test.sh [SCENARIO] [MOLECULE_COMMAND]   (default: default test)
#        KEEP_INSTANCES=1 scripts/molecule-test.sh default converge   keeps the container to look at
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scenario="${1:-default}"
command="${2:-test}"
venv="${VENV:-$repo/.venv}"

export PATH="$venv/bin:$PATH"
export CONTAINERS_CONF="$repo/scripts/containers.conf"

# Every Debian image the scenario's platforms name (cached; built when missing or stale).
grep -o 'localhost/anycast-edge/debian[0-9]*' "$repo/molecule/$scenario/molecule.yml" | sort -u | grep -o '[0-9]*$' \
| while read -r release; do
    case "$release" in
        11) suite=bullseye ;; 12) suite=bookworm ;; 13) suite=trixie ;;
        *) echo "molecule-test.sh: no Debian suite for debian$release" >&2; exit 1 ;;
    esac
    "$repo/scripts/build-image.sh" --suite "$suite"
done

# Ansible imports collections from .../ansible_collections/<namespace>/<name>. The
# scenario runs on a snapshot of the working tree (tracked and new files, not
# ignored ones), so edits made while it runs cannot make converge and
# idempotence see different roles.
collections="$repo/build/molecule"
snapshot="$collections/ansible_collections/anycast/edge"
rm -rf "$snapshot"
mkdir -p "$snapshot"
(cd "$repo" && git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ "$snapshot/")
export ANSIBLE_COLLECTIONS_PATH="$collections"

cleanup() {
    local rc=$?
    if [ "${KEEP_INSTANCES:-0}" = 1 ]; then exit "$rc"; fi
    # molecule destroy normally does this; containers left by an interrupted run
    # carry the scenario's platform names, which start with "aem-".
    (cd "$snapshot" && molecule destroy -s "$scenario" >/dev/null 2>&1) || true
    for name in $(podman ps -a --format '{{.Names}}' | grep '^aem-' || true); do
        podman rm -f "$name" >/dev/null 2>&1 || true
    done
    exit "$rc"
}
trap cleanup EXIT

cd "$snapshot"
start=$(date +%s)
# CI shows only the end of the output: on failure, repeat the task that failed there.
log="$repo/build/molecule-$scenario.log"
set +e
molecule "$command" -s "$scenario" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
    python3 "$repo/scripts/failed_task.py" "$log"
    exit "$rc"
fi
echo "molecule $command -s $scenario: passed in $(( $(date +%s) - start )) s"
