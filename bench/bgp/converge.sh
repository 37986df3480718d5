#!/usr/bin/env bash
# The converge time anycast.edge.bgp adds to a no-op playbooks/site.yml, in the lab.
#
#   flock /work/locks/heavy.lock bash -c 'make lab && bash bench/bgp/converge.sh 3; make lab-down'
#
# Runs site.yml RUNS times with BGP and RUNS times without (-e '{"bgp_neighbors": []}' skips the role),
# alternating, on the lab as it is (each run must report changed=0), with Ansible's profile_tasks
# callback; prints per run the wall time and the seconds of the bgp role's tasks, then a JSON summary
# (also written to bench/results/bgp-converge-<time>.json).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
runs=${1:-3}
export PATH="$repo/.venv/bin:$PATH"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$repo/scripts/containers.conf}"
export ANSIBLE_COLLECTIONS_PATH="$repo/build/collections" ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
export ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_RETRY_FILES_ENABLED=False
export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks PROFILE_TASKS_TASK_OUTPUT_LIMIT=all
out="$repo/build/bench-bgp-converge"
mkdir -p "$out" "$repo/bench/results"
podman container exists ael-edge1 || { echo "the lab is not up (make lab)" >&2; exit 1; }

for i in $(seq "$runs"); do
    for mode in with without; do
        extra=()
        [ "$mode" = without ] && extra=(-e '{"bgp_neighbors": []}')
        log="$out/$mode-$i.log"
        start=$(date +%s.%N)
        (cd "$repo" && ansible-playbook -i lab/inventory playbooks/site.yml "${extra[@]}") > "$log" 2>&1
        end=$(date +%s.%N)
        echo "$mode $i $start $end $log"
    done
done | python3 -c '
import json, re, sys, time
runs = []
for line in sys.stdin:
    mode, index, start, end, log = line.split()
    text = open(log).read()
    changed = sum(int(n) for n in re.findall(r"changed=(\d+)", text.split("PLAY RECAP")[-1]))
    # profile_tasks: "anycast.edge.bgp : Task name ---- 1.23s"
    bgp = sum(float(s) for s in re.findall(r"^anycast\.edge\.bgp : .*?-+ ([0-9.]+)s$", text, re.M))
    tasks = len(re.findall(r"^anycast\.edge\.bgp : ", text, re.M))
    runs.append({"mode": mode, "seconds": round(float(end) - float(start), 1), "changed": changed,
                 "bgp_task_seconds": round(bgp, 2), "bgp_tasks": tasks})
    print("%-7s run %s: %5.1f s, changed=%d, bgp role tasks: %d, %.2f s" % (
        mode, index, float(end) - float(start), changed, tasks, bgp), flush=True)
def mean(mode, key):
    values = [r[key] for r in runs if r["mode"] == mode]
    return round(sum(values) / len(values), 2)
summary = {"runs": runs, "with_bgp_seconds": mean("with", "seconds"), "without_bgp_seconds": mean("without", "seconds"),
           "bgp_task_seconds": mean("with", "bgp_task_seconds")}
summary["added_seconds"] = round(summary["with_bgp_seconds"] - summary["without_bgp_seconds"], 2)
print(json.dumps(summary, indent=1))
json.dump(summary, open("'"$repo"'/bench/results/bgp-converge-%s.json" % time.strftime("%Y%m%d-%H%M%S"), "w"), indent=1)
'
