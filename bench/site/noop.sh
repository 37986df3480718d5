#!/usr/bin/env bash
# What a no-op playbooks/site.yml costs on one lab edge, in trivial tasks on the same connection.
#
#   flock /work/locks/heavy.lock bash -c 'make lab && bash bench/site/noop.sh 3; make lab-down'
#
# On the lab as it is (configured: every site.yml run must report changed=0), alternates RUNS times:
#   - site.yml limited to HOST (default ael-edge1), with Ansible's profile_tasks callback;
#   - a playbook of PINGS (default 25) ansible.builtin.ping tasks on HOST: same inventory, same
#     connection (containers.podman.podman), same play settings (become, no facts).
#   - with BASE=<another checkout of the collection>, also that checkout's site.yml (the old way),
#     side by side in the same session (it must be a no-op on this lab too).
# Both are whole ansible-playbook runs, so Ansible's start-up is in both. The target holds when the
# median site.yml run takes no longer than the median PINGS-ping run; "ping-equivalents" is
# PINGS x site / pings. Prints every run, the slowest site.yml tasks of the last run, and a JSON
# summary (also written to bench/results/site-noop-<time>.json).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
runs=${1:-3}
pings=${2:-25}
host=${3:-ael-edge1}
export PATH="$repo/.venv/bin:$PATH"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$repo/scripts/containers.conf}"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
export ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_RETRY_FILES_ENABLED=False
out="$repo/build/bench-site-noop"
mkdir -p "$out" "$repo/bench/results"
podman container exists "$host" || { echo "the lab is not up (make lab)" >&2; exit 1; }

# The ping playbook: PINGS separate tasks (a loop would be one task).
ping_playbook="$out/pings-$pings.yml"
{
    printf -- '---\n- name: %s trivial tasks on one connection\n  hosts: all\n  become: true\n  gather_facts: false\n  tasks:\n' "$pings"
    for i in $(seq "$pings"); do
        printf '    - name: Ping %d\n      ansible.builtin.ping:\n' "$i"
    done
} > "$ping_playbook"

for i in $(seq "$runs"); do
    whats=(site pings)
    [ -n "${BASE:-}" ] && whats+=(base)
    for what in "${whats[@]}"; do
        log="$out/$what-$i.log"
        dir=$repo
        case $what in
            site|base) playbook=playbooks/site.yml; callbacks=(ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks) ;;
            pings) playbook=$ping_playbook; callbacks=() ;;
        esac
        # The old checkout's modules and roles: its own collection path.
        [ "$what" = base ] && dir=$BASE
        start=$(date +%s.%N)
        (cd "$dir" && env "${callbacks[@]}" PROFILE_TASKS_TASK_OUTPUT_LIMIT=all \
            ANSIBLE_COLLECTIONS_PATH="$dir/build/collections" \
            ansible-playbook -i "$repo/lab/inventory" --limit "$host" "$playbook") > "$log" 2>&1 \
            || { tail -40 "$log" >&2; echo "$what run $i failed (log: $log)" >&2; exit 1; }
        end=$(date +%s.%N)
        echo "$what $i $start $end $log"
    done
done | python3 "$repo/bench/site/summarise.py" "$pings" "$repo/bench/results"
