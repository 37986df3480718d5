#!/usr/bin/env bash
# The anycast.edge lab: podman containers with systemd, configured by
# playbooks/site.yml through the podman connection, then proven with traffic.
#
# usage: scripts/lab.sh up     build/start the lab, converge twice, prove it, print the table
#        scripts/lab.sh down   remove every container, network, namespace and image it made
#        scripts/lab.sh prove  only the proofs and tables, against a lab that is up
#
# Containers (image from scripts/build-image.sh, settings of scripts/containers.conf):
#   ael-edge1, ael-edge2   edge servers (the inventory lab/inventory)
#   ael-client, ael-client2  clients; ael-client also floods
#   ael-origin, ael-origin2  the origins behind the proxies, one pool per route; read
#                          PROXY v2 (lab/origin.py)
#   ael-router             the edges' upstream: BIRD (lab/router-bird.conf), eBGP to both
#                          edges, ECMP routes; the clients reach every anycast prefix
#                          through it. Also acme's router, the remote end of its GRE tunnel.
# They share the podman network ael-net. Its bridge and NAT rules are created
# inside the network namespace ael-host (podman runs under nsenter), so the
# machine's root network namespace is never touched. Results: build/lab/.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
state="$repo/build/lab"
image="${ANYCAST_EDGE_IMAGE:-localhost/anycast-edge/debian12:latest}"
hostns=ael-host
network=ael-net
subnet4=10.89.77
subnet6=fd00:ae1:
label=anycast.edge.lab=ael
inventory="$repo/lab/inventory"

# name:last-octet (IPv4 .N, IPv6 ::N)
containers=(ael-edge1:11 ael-edge2:12 ael-client:21 ael-client2:22 ael-origin:30 ael-origin2:31 ael-router:40)
origins=(ael-origin ael-origin2)

export CONTAINERS_CONF="${CONTAINERS_CONF:-$repo/scripts/containers.conf}"
export PATH="$venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$repo/build/collections"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
export ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_RETRY_FILES_ENABLED=False

trap 'echo "lab: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

say() { printf '\n=== lab: %s\n' "$*"; }
die() { printf 'lab: %s\n' "$*" >&2; exit 1; }
# podman commands that set up or tear down networking run inside ael-host.
hpodman() { nsenter --net="/run/netns/$hostns" podman "$@"; }
in_ctr() { local name=$1; shift; podman exec "$name" "$@"; }

ensure_hostns() {
    if [ ! -e "/run/netns/$hostns" ]; then
        ip netns add "$hostns"
        ip -n "$hostns" link set lo up
    fi
    # Frames between containers cross the bridge: keep them out of ael-host's
    # iptables, or podman's masquerade rule would hide the clients' addresses.
    if [ -e /proc/sys/net/bridge ]; then
        ip netns exec "$hostns" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0
    fi
}

# ---------------------------------------------------------------------------
down() {
    say "down"
    local names
    names=$(podman ps -a --filter "label=$label" --format '{{.Names}}' || true)
    if [ -n "$names" ]; then
        # Tear networking down where it was set up, never in the root namespace.
        ensure_hostns
        for name in $names; do
            hpodman rm -f -t 5 "$name" >/dev/null && echo "removed container $name"
        done
    fi
    if podman network exists "$network" 2>/dev/null; then
        ensure_hostns
        hpodman network rm -f "$network" >/dev/null && echo "removed network $network"
    fi
    if [ -e "/run/netns/$hostns" ]; then
        ip netns del "$hostns" && echo "removed network namespace $hostns"
    fi
    if [ -e "$state/image-built-by-lab" ]; then
        if podman image exists "$image"; then
            if podman rmi "$image" >/dev/null 2>&1; then
                echo "removed image $image (the lab built it)"
            else
                echo "kept image $image: other containers (molecule?) still use it"
            fi
        fi
        rm -f "$state/image-built-by-lab"
    fi
    rm -rf "$state/results"
    echo "lab is down"
}

# ---------------------------------------------------------------------------
prepare() {
    [ "$(id -u)" = 0 ] || die "needs root (rootful podman, network namespaces)"
    for tool in podman nsenter ip python3; do
        command -v "$tool" >/dev/null || die "'$tool' is missing (scripts/apt-packages.txt; run make deps)"
    done
    if [ ! -x "$venv/bin/ansible-playbook" ]; then
        say "no venv at $venv: running scripts/install-deps.sh"
        bash "$repo/scripts/install-deps.sh"
    fi
    mkdir -p "$repo/build/collections/ansible_collections/anycast" "$state/results"
    ln -sfn "$repo" "$repo/build/collections/ansible_collections/anycast/edge"
    rm -f "$state"/results/*

    say "image $image"
    local existed=no
    podman image exists "$image" && existed=yes
    # Also rebuilds an image made from another package list (bird2 is in it now).
    "$repo/scripts/build-image.sh" --image "$image"
    [ "$existed" = yes ] || touch "$state/image-built-by-lab"
}

start_containers() {
    say "network $network in namespace $hostns, containers"
    ensure_hostns
    if ! podman network exists "$network"; then
        podman network create --disable-dns --subnet "$subnet4.0/24" --subnet "${subnet6}:/64" \
            --label "$label" "$network" >/dev/null
    fi
    local entry name octet
    for entry in "${containers[@]}"; do
        name=${entry%%:*}; octet=${entry##*:}
        if ! podman container exists "$name"; then
            hpodman run -d --name "$name" --hostname "$name" --label "$label" \
                --privileged --systemd=always \
                --network "$network" --ip "$subnet4.$octet" --ip6 "${subnet6}:$octet" \
                "$image" >/dev/null
            echo "created $name ($subnet4.$octet, ${subnet6}:$octet)"
        elif [ "$(podman inspect -f '{{.State.Running}}' "$name")" != true ]; then
            hpodman start "$name" >/dev/null
            echo "started $name"
        else
            echo "running $name"
        fi
    done
    for entry in "${containers[@]}"; do
        name=${entry%%:*}
        local status
        status=$(timeout 90 podman exec "$name" systemctl is-system-running --wait 2>/dev/null || true)
        case "$status" in
            running|degraded) ;;
            *) die "$name: systemd did not come up (is-system-running: '${status:-timeout}')" ;;
        esac
        podman exec "$name" mkdir -p /opt/ael
        podman cp "$repo/lab/probe.py" "$name:/opt/ael/probe.py"
    done
}

# The clients reach every anycast prefix through ael-router, which learns them over
# BGP from both edges. Clients, router and edges share one segment: the router must
# not send ICMP redirects (the clients would then bypass it) and the clients ignore them.
setup_support() {
    say "clients, origin, router"
    local router4=$subnet4.40 router6=${subnet6}:40 client
    for client in ael-client ael-client2; do
        in_ctr "$client" sh -ec "
            sysctl -qw net.ipv4.conf.all.accept_redirects=0 net.ipv4.conf.eth0.accept_redirects=0 \
                       net.ipv6.conf.all.accept_redirects=0 net.ipv6.conf.eth0.accept_redirects=0
            for prefix in 192.0.2.0/24 203.0.113.0/24 198.51.100.0/24; do
                ip route flush root \$prefix 2>/dev/null || true
                ip route add \$prefix via $router4
            done
            ip -6 route flush root 2001:db8::/32 2>/dev/null || true
            ip -6 route add 2001:db8:100::/64 via $router6"
    done
    setup_router
    local origin
    for origin in "${origins[@]}"; do
        podman cp "$repo/lab/origin.py" "$origin:/opt/ael/origin.py"
        start_origin "$origin"
        echo "$origin: $(in_ctr "$origin" systemctl is-active ael-origin) on [::]:8080 (PROXY v2)"
    done
}

start_origin() {  # CONTAINER: lab/origin.py as the transient unit ael-origin, unless it runs
    if ! in_ctr "$1" systemctl -q is-active ael-origin; then
        in_ctr "$1" systemd-run --unit ael-origin --collect /usr/bin/python3 /opt/ael/origin.py --port 8080 >/dev/null
    fi
}

# ael-router runs BIRD with lab/router-bird.conf: eBGP to both edges, ECMP with
# layer-4 hashing, GRACEFUL_SHUTDOWN honoured.
setup_router() {
    in_ctr ael-router sh -ec "
        sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
                   net.ipv4.fib_multipath_hash_policy=1 net.ipv6.fib_multipath_hash_policy=1 \
                   net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0
        # static routes of an older lab (half of each prefix to each edge) go; BIRD's stay
        for prefix in 192.0.2.0/24 203.0.113.0/24 198.51.100.0/24; do
            ip route flush root \$prefix proto boot 2>/dev/null || true
        done
        ip -6 route flush root 2001:db8::/32 proto boot 2>/dev/null || true"
    podman cp "$repo/lab/router-bird.conf" ael-router:/etc/bird/bird.conf.new
    in_ctr ael-router sh -ec "
        bird -p -c /etc/bird/bird.conf.new
        chown bird:bird /etc/bird/bird.conf.new && chmod 0640 /etc/bird/bird.conf.new
        if cmp -s /etc/bird/bird.conf.new /etc/bird/bird.conf && systemctl -q is-active bird; then
            rm /etc/bird/bird.conf.new
        else
            mv /etc/bird/bird.conf.new /etc/bird/bird.conf
            systemctl enable -q bird
            systemctl restart bird
        fi"
    echo "router: bird $(in_ctr ael-router systemctl is-active bird), ECMP with layer-4 hashing"
}

# ---------------------------------------------------------------------------
changed_total() {  # sum of changed= over the PLAY RECAP of a log
    awk '/^PLAY RECAP/ {recap=1; next} recap && /changed=/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^changed=/) { split($i, a, "="); sum += a[2] } }
         END { print sum + 0 }' "$1"
}
failed_total() {
    awk '/^PLAY RECAP/ {recap=1; next} recap && /failed=/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^(failed|unreachable)=/) { split($i, a, "="); sum += a[2] } }
         END { print sum + 0 }' "$1"
}

edge_state() {  # kernel state of an edge that check mode must not change
    # shellcheck disable=SC2016  # $save expands in the container's shell
    in_ctr "$1" sh -c 'ip -d route show table all; ip rule; ip netns list;
                       for save in iptables-save ip6tables-save iptables-legacy-save ip6tables-legacy-save; do
                           echo "== $save"; $save 2>/dev/null | grep -v "^#"; done
                       ls /etc/sysctl.d /etc/anycast-proxy 2>&1; true' \
        | sed -E 's/\[[0-9]+:[0-9]+\]//'
}

converge() {
    local n=$1 log="$state/converge-$1.log" start
    say "converge $n: ansible-playbook -i lab/inventory playbooks/site.yml"
    start=$(date +%s)
    (cd "$repo" && ansible-playbook -i "$inventory" playbooks/site.yml) > "$log" 2>&1 \
        || { tail -60 "$log"; die "converge $n failed (full log: $log)"; }
    local changed seconds=$(( $(date +%s) - start ))
    changed=$(changed_total "$log")
    sed -n '/^PLAY RECAP/,$p' "$log"
    grep -E '"msg": ".*GRE skipped' "$log" | sed 's/^ *"msg": *"//; s/"$//' | sort -u || true
    echo "converge $n: changed=$changed in ${seconds}s"
    printf '{"run": %d, "changed": %d, "seconds": %d}\n' "$n" "$changed" "$seconds" > "$state/results/converge-$n.json"
}

check_mode_run() {
    local log="$state/check.log"
    say "check mode: ansible-playbook playbooks/site.yml --check --diff"
    edge_state ael-edge1 > "$state/edge1-before-check.txt"
    (cd "$repo" && ansible-playbook -i "$inventory" playbooks/site.yml --check --diff) > "$log" 2>&1 \
        || { tail -60 "$log"; die "check-mode run failed (full log: $log)"; }
    edge_state ael-edge1 > "$state/edge1-after-check.txt"
    local same=true predicted
    cmp -s "$state/edge1-before-check.txt" "$state/edge1-after-check.txt" || same=false
    predicted=$(changed_total "$log")
    sed -n '/^PLAY RECAP/,$p' "$log"
    echo "check mode: $predicted predicted changes; edge1 kernel state unchanged: $same"
    printf '{"predicted": %d, "unchanged": %s}\n' "$predicted" "$same" > "$state/results/check.json"
}

# ---------------------------------------------------------------------------
start_tenant_services() {
    say "tenant servers inside the tenant namespaces of both edges"
    local edge spec tenant address
    for edge in ael-edge1 ael-edge2; do
        podman cp "$repo/lab/tenant_service.py" "$edge:/opt/ael/tenant_service.py"
        for spec in acme:203.0.113.10 globex:203.0.113.130; do
            tenant=${spec%%:*}; address=${spec##*:}
            # The tenant's server address, as its own machine behind the tunnel would have it.
            in_ctr "$edge" ip -n "tenant-$tenant" addr replace "$address/32" dev lo
            if ! in_ctr "$edge" systemctl -q is-active "ael-tenant-$tenant"; then
                in_ctr "$edge" systemd-run --unit "ael-tenant-$tenant" --collect \
                    -p "NetworkNamespacePath=/run/netns/tenant-$tenant" \
                    /usr/bin/python3 /opt/ael/tenant_service.py --tenant "$tenant" --edge "$edge" --ports 21,22 >/dev/null
            fi
        done
    done
    sleep 1
}

prove_anyip() {
    say "client dials random ports on random AnyIP addresses of both edges"
    # Through ael-router: its ECMP route picks the edge per connection (layer-4 hash).
    in_ctr ael-client python3 /opt/ael/probe.py dial --count 12 --pace 0.03 \
        --target "anycast,192.0.2.0/24,$subnet4.11|$subnet4.12" \
        --target "anycast,2001:db8:100::/64,${subnet6}:11|${subnet6}:12" > "$state/results/dial.json"
    python3 -c '
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    a = r["answer"]
    print("%-24s port %-5d %-7s origin saw client %s dialled %s:%s via %s" % (
        r["address"], r["port"], r["outcome"], a.get("client"), a.get("dialled"),
        a.get("dialled_port"), a.get("edge")))' "$state/results/dial.json"
    # A protocol where the server speaks first (SMTP, SSH banners): the client only reads.
    : > "$state/results/banner.jsonl"
    local target
    for target in anycast:192.0.2.33 anycast:192.0.2.199; do
        printf '{"edge": "%s", "result": %s}\n' "${target%%:*}" \
            "$(in_ctr ael-client python3 /opt/ael/probe.py tcp --address "${target##*:}" --port 25 --timeout 3)" \
            >> "$state/results/banner.jsonl"
    done
    cat "$state/results/banner.jsonl"
}

prove_rate_limit() {
    say "flood from ael-client while ael-client2 connects steadily (through the router, both edges)"
    sleep 2   # let the client's bucket refill after the dial test
    # 200 new connections a second for 3 s: ten times the limit of 20/s (burst 20).
    in_ctr ael-client python3 /opt/ael/probe.py flood --prefix 192.0.2.0/25 --count 600 --rate 200 --duration 4 \
        > "$state/results/flood.json" &
    local flood=$!
    in_ctr ael-client2 python3 /opt/ael/probe.py steady --prefix 192.0.2.0/25 --count 20 --interval 0.15 \
        > "$state/results/steady.json"
    wait "$flood"
    echo "flood:  $(cat "$state/results/flood.json")"
    echo "steady: $(cat "$state/results/steady.json")"
}

prove_tenants() {
    say "tenant traffic through the router: acme and globex, on whichever edge ECMP picks"
    local spec name address port
    : > "$state/results/tenant.jsonl"
    for spec in acme-ftp:203.0.113.10:21 acme-ssh:203.0.113.10:22 globex-ftp:203.0.113.130:21 globex-ssh:203.0.113.130:22; do
        IFS=: read -r name address port <<< "$spec"
        printf '{"check": "%s", "result": %s}\n' "$name" \
            "$(in_ctr ael-client python3 /opt/ael/probe.py tcp --address "$address" --port "$port" --timeout 2)" \
            >> "$state/results/tenant.jsonl"
    done
    cat "$state/results/tenant.jsonl"
    # The firewall's verdicts, read from the tenant namespace itself.
    in_ctr ael-edge1 ip netns exec tenant-acme nft list table inet anycast_edge > "$state/acme-nft.txt" 2>&1 || true
}

prove_gre() {
    say "GRE"
    local probe kernel
    kernel=$(in_ctr ael-edge1 uname -r)
    # shellcheck disable=SC2016  # $(uname -r) expands in the container's shell
    probe=$(in_ctr ael-edge1 sh -c 'test -d /sys/module/ip_gre ||
              grep -qs "/ip_gre\.ko" /lib/modules/$(uname -r)/modules.builtin /lib/modules/$(uname -r)/modules.dep && echo yes || echo no')
    if [ "$probe" != yes ]; then
        local reason="kernel $kernel has no GRE (ip_gre neither loaded, built in nor installable: CONFIG_NET_IPGRE); site.yml skipped gre-acme on both edges"
        echo "skipped: $reason"
        printf '{"status": "skipped", "reason": "%s"}\n' "$reason" > "$state/results/gre.json"
        return
    fi
    # The router's end of acme's anycast tunnel; the edges' end is gre-acme in tenant-acme.
    in_ctr ael-router sh -ec "
        ip link show gre-acme >/dev/null 2>&1 || ip link add gre-acme type gre local $subnet4.40 remote 198.51.100.1 key 42 ttl 64
        ip addr replace 10.255.0.2/30 dev gre-acme
        ip link set gre-acme up"
    if in_ctr ael-router ping -c 3 -W 2 10.255.0.1 > "$state/gre-ping.txt" 2>&1; then
        printf '{"status": "ok", "reason": "router 10.255.0.2 pings 10.255.0.1 in tenant-acme through the anycast tunnel"}\n' > "$state/results/gre.json"
    else
        printf '{"status": "failed", "reason": "no ping through the tunnel (see %s)"}\n' "$state/gre-ping.txt" > "$state/results/gre.json"
    fi
    cat "$state/results/gre.json"
}

# --- BGP ----------------------------------------------------------------------
# Every anycast prefix the edges announce (lab/inventory: the proxy's, the tenants',
# the GRE endpoint, the anycast DNS address).
bgp_prefixes=(192.0.2.0/24 2001:db8:100::/64 203.0.113.0/25 203.0.113.128/25 198.51.100.1/32 198.51.100.53/32)

router_nexthops() {  # PREFIX -> the router's kernel next hops for it, sorted, space-separated
    local family=-4
    case "$1" in *:*) family=-6 ;; esac
    in_ctr ael-router ip "$family" -j route show exact "$1" | python3 -c '
import json, sys
hops = set()
for route in json.load(sys.stdin):
    hops.update([route["gateway"]] if route.get("gateway") else [])
    hops.update(hop["gateway"] for hop in route.get("nexthops", []))
print(" ".join(sorted(hops)))'
}

paths() {  # PREFIX EDGE... -> the next hops that mean "through these edges"
    local prefix=$1 edge out=()
    shift
    for edge in "$@"; do
        case "$prefix" in *:*) out+=("${subnet6}:$edge") ;; *) out+=("$subnet4.$edge") ;; esac
    done
    printf '%s\n' "${out[@]}" | sort | paste -sd' '
}

# The proxy's prefixes: what a stopped proxy withdraws (the host's other prefixes stay).
proxy_prefixes=(192.0.2.0/24 2001:db8:100::/64)

wait_paths() {  # all|proxy SECONDS EDGE... : until those prefixes go to exactly these edges; 1 on timeout
    local which=$1 timeout=$2 started prefix prefixes=("${bgp_prefixes[@]}")
    shift 2
    [ "$which" = proxy ] && prefixes=("${proxy_prefixes[@]}")
    started=$(date +%s)
    for prefix in "${prefixes[@]}"; do
        until [ "$(router_nexthops "$prefix")" = "$(paths "$prefix" "$@")" ]; do
            (( $(date +%s) - started < timeout )) || return 1
            sleep 0.1
        done
    done
}

now() { date +%s.%N; }

# ael-client dials 20 new connections a second (both families, random addresses and
# ports) for SECONDS, in the background; one JSON line per dial in results/NAME-dials.jsonl.
start_dialling() {  # NAME SECONDS  (stop_dialling NAME ends it earlier)
    in_ctr ael-client rm -f "/run/ael-stop-$1"
    in_ctr ael-client python3 /opt/ael/probe.py timeline --prefix 192.0.2.0/24 --prefix 2001:db8:100::/64 \
        --rate 20 --duration "$2" --timeout 2 --stop-file "/run/ael-stop-$1" > "$state/results/$1-dials.jsonl" &
    dialler=$!
}

stop_dialling() {  # NAME
    in_ctr ael-client touch "/run/ael-stop-$1"
    wait "$dialler" || true
}

# The proxy's view of its origins on both edges, one line per edge: "ROUTE/ORIGIN=UP ..." (probe.py origins).
origins_seen() {
    local edge
    for edge in ael-edge1 ael-edge2; do
        in_ctr "$edge" python3 /opt/ael/probe.py origins --metrics 127.0.0.1:9464 \
            | python3 -c 'import json, sys; print(" ".join("%s=%s" % (k.replace(" ", "/"), v) for k, v in sorted(json.load(sys.stdin).items())))'
    done
}

wait_origins() {  # up|down SECONDS: until both edges see ael-origin2's origins so (all others up); 1 on timeout
    local want=$1 timeout=$2 started
    started=$(date +%s)
    until origins_seen | python3 -c '
import sys
want = sys.argv[1]
lines = sys.stdin.read().split("\n")
edges = [dict(item.rsplit("=", 1) for item in line.split()) for line in lines if line.strip()]
def good(key, up):
    second = ".31]:" in key or ".31:" in key or "::31]:" in key
    return up == ("0" if second and want == "down" else "1")
ok = len(edges) == 2 and all(len(e) >= 4 and all(good(k, v) for k, v in e.items()) for e in edges)
sys.exit(0 if ok else 1)' "$want"; do
        (( $(date +%s) - started < timeout )) || return 1
        sleep 0.1
    done
}

# Both clients dial 20 new connections a second each (40/s, both families) while the origin
# on ael-origin2 stops for 6 s and starts again: the pools fail over to ael-origin at connect
# time (no dial may fail), both edges mark ael-origin2 down, and take it back once it is up.
prove_origin_failover() {
    say "origin pool: ael-origin2's origin stops for 6 s and starts again while both clients dial 20 connections/s each"
    wait_paths all 60 11 12 || true
    local ready=true stopped down=null started back=null client pids=()
    wait_origins up 30 || ready=false
    for client in ael-client ael-client2; do
        in_ctr "$client" python3 /opt/ael/probe.py timeline --prefix 192.0.2.0/24 --prefix 2001:db8:100::/64 \
            --rate 20 --duration 22 --timeout 2 > "$state/results/origin-failover-$client-dials.jsonl" &
        pids+=($!)
    done
    sleep 4
    stopped=$(now)
    in_ctr ael-origin2 systemctl stop ael-origin
    wait_origins down 10 && down=$(now)
    sleep "$(python3 -c "print(max(0.0, 6 - ($(now) - $stopped)))")"
    started=$(now)
    start_origin ael-origin2
    wait_origins up 20 && back=$(now)
    wait "${pids[@]}" || true
    printf '{"ready": %s, "stopped": %s, "down": %s, "started": %s, "back": %s, "seen_after": "%s"}\n' \
        "$ready" "$stopped" "$down" "$started" "$back" "$(origins_seen | paste -sd'|')" \
        | tee "$state/results/origin-failover.json"
}

prove_bgp_paths() {
    say "BGP: the router holds every prefix from both edges"
    # After a converge the health daemons announce once their hold-down has passed.
    wait_paths all 60 11 12 || true
    : > "$state/results/bgp-paths.jsonl"
    local prefix
    for prefix in "${bgp_prefixes[@]}"; do
        printf '{"prefix": "%s", "nexthops": "%s", "want": "%s"}\n' "$prefix" "$(router_nexthops "$prefix")" \
            "$(paths "$prefix" 11 12)" >> "$state/results/bgp-paths.jsonl"
    done
    cat "$state/results/bgp-paths.jsonl"
    in_ctr ael-router birdc show protocols | tee "$state/router-protocols.txt"
}

prove_bgp_proxy_stop() {
    say "BGP: the proxy on ael-edge1 stops (service and socket unit) while ael-client dials 20 connections/s"
    wait_paths all 60 11 12 || true
    local stopped withdrawn=null started back=null
    start_dialling proxy-stop 14
    sleep 3
    stopped=$(now)
    # The socket unit too: it owns the listeners and would start the proxy again at the next
    # connection (a stop of the service alone is a restart that loses nothing, see docs/proxy.md).
    in_ctr ael-edge1 systemctl stop anycast-proxy.socket anycast-proxy.service
    wait_paths proxy 10 12 && withdrawn=$(now)
    sleep 6
    started=$(now)
    in_ctr ael-edge1 systemctl start anycast-proxy.socket anycast-proxy.service
    wait "$dialler" || true
    wait_paths all 60 11 12 && back=$(now)
    printf '{"stopped": %s, "withdrawn": %s, "started": %s, "back": %s}\n' "$stopped" "$withdrawn" "$started" "$back" \
        | tee "$state/results/proxy-stop.json"
}

prove_bgp_freeze() {
    say "BGP: ael-edge1 freezes (podman pause) while ael-client dials 20 connections/s"
    wait_paths all 60 11 12 || true
    local frozen withdrawn=null thawed back=null
    start_dialling freeze 12
    sleep 3
    frozen=$(now)
    podman pause ael-edge1 >/dev/null
    wait_paths all 10 12 && withdrawn=$(now)
    sleep 5
    thawed=$(now)
    podman unpause ael-edge1 >/dev/null
    wait "$dialler" || true
    wait_paths all 90 11 12 && back=$(now)
    printf '{"frozen": %s, "withdrawn": %s, "thawed": %s, "back": %s}\n' "$frozen" "$withdrawn" "$thawed" "$back" \
        | tee "$state/results/freeze.json"
}

prove_bgp_drain() {
    say "BGP: ansible-playbook playbooks/drain.yml -l ael-edge1 while ael-client dials 20 connections/s"
    wait_paths all 60 11 12 || true
    local started finished gshut=null log="$state/drain.log" rc=0
    start_dialling drain 20
    sleep 2
    # Watch the router for the path with GRACEFUL_SHUTDOWN (65535:0) before it is withdrawn.
    # shellcheck disable=SC2016  # expanded inside the container
    in_ctr ael-router sh -c 'for i in $(seq 150); do
            birdc show route 192.0.2.0/24 all | grep -q "(65535,0)" && { date +%s.%N; exit 0; }; sleep 0.1; done' \
        > "$state/gshut-seen.txt" &
    local watcher=$!
    started=$(now)
    (cd "$repo" && ansible-playbook -i "$inventory" playbooks/drain.yml -l ael-edge1) > "$log" 2>&1 || rc=$?
    finished=$(now)
    wait "$watcher" || true
    [ -s "$state/gshut-seen.txt" ] && gshut=$(cat "$state/gshut-seen.txt")
    wait "$dialler" || true
    local after drained
    after=$(for p in "${bgp_prefixes[@]}"; do [ "$(router_nexthops "$p")" = "$(paths "$p" 12)" ] && echo ok || echo "$p"; done | sort -u | paste -sd,)
    drained=$(in_ctr ael-edge1 test -e /var/lib/anycast-edge/bgp-drained && echo true || echo false)
    # The play's own report: what remained, how long the withdrawal took.
    local report
    report=$(grep -o '"msg": "ael-edge1: [^"]*"' "$log" | tail -1 | sed 's/^"msg": //' || true)
    printf '{"rc": %d, "started": %s, "finished": %s, "gshut_seen": %s, "paths_after": "%s", "drained": %s, "report": %s}\n' \
        "$rc" "$started" "$finished" "$gshut" "$after" "$drained" "${report:-null}" \
        | tee "$state/results/drain.json"
}

prove_bgp_undrain() {
    say "BGP: ansible-playbook playbooks/undrain.yml -l ael-edge1"
    local rc=0 back=null started log="$state/undrain.log"
    start_dialling undrain 12
    sleep 2
    started=$(now)
    (cd "$repo" && ansible-playbook -i "$inventory" playbooks/undrain.yml -l ael-edge1) > "$log" 2>&1 || rc=$?
    wait_paths all 30 11 12 && back=$(now)
    wait "$dialler" || true
    printf '{"rc": %d, "started": %s, "back": %s}\n' "$rc" "$started" "$back" | tee "$state/results/undrain.json"
}

# site.yml's rolling update where the proxy must restart (a unit change: one more open
# file allowed), while ael-client dials: each batch is drained, restarted, undrained.
# Then the same again to put the unit back.
prove_bgp_rolling_restart() {
    say "BGP: site.yml restarts the proxy on both edges (a unit change), draining each batch, while ael-client dials"
    wait_paths all 60 11 12 || true
    local rc=0 started finished log="$state/rolling.log" limit
    limit=$(( $(in_ctr ael-edge1 systemctl show anycast-proxy --property=LimitNOFILE --value) + 1 ))
    start_dialling rolling 400
    local pids_before
    pids_before=$(for e in ael-edge1 ael-edge2; do in_ctr "$e" systemctl show anycast-proxy --property=MainPID --value; done | paste -sd' ')
    started=$(now)
    (cd "$repo" && ansible-playbook -i "$inventory" playbooks/site.yml -e "transparent_proxy_limit_nofile=$limit") \
        > "$log" 2>&1 || rc=$?
    finished=$(now)
    stop_dialling rolling
    local pids_after
    pids_after=$(for e in ael-edge1 ael-edge2; do in_ctr "$e" systemctl show anycast-proxy --property=MainPID --value; done | paste -sd' ')
    # Put the unit back as the inventory has it (restarts again, drained again).
    (cd "$repo" && ansible-playbook -i "$inventory" playbooks/site.yml) > "$state/rolling-back.log" 2>&1 || rc=$?
    printf '{"rc": %d, "started": %s, "finished": %s, "pids_before": "%s", "pids_after": "%s", "drains": %d, "undrains": %d}\n' \
        "$rc" "$started" "$finished" "$pids_before" "$pids_after" \
        "$(grep -c 'ael-edge[12]: drained; withdrawn' "$log" || true)" "$(grep -c 'ael-edge[12]: undrained in' "$log" || true)" \
        | tee "$state/results/rolling.json"
}

status_table() {
    say "status: ansible-playbook -i lab/inventory playbooks/status.yml"
    local log="$state/status.log"
    (cd "$repo" && ansible-playbook -i "$inventory" playbooks/status.yml) > "$log" 2>&1 \
        || { tail -40 "$log"; die "status.yml failed (full log: $log)"; }
    # The table is the msg of the last task: print its lines without YAML quoting.
    python3 "$repo/lab/report.py" --status-log "$log" | tee "$state/results/status.txt"
}

up() {
    local started
    started=$(date +%s)
    prepare
    start_containers
    setup_support
    check_mode_run
    converge 1
    converge 2
    prove "$started"
}

# The proofs alone, against a lab that is up (scripts/lab.sh prove).
prove() {
    local started=${1:-$(date +%s)}
    mkdir -p "$state/results"
    start_tenant_services
    prove_anyip
    prove_origin_failover
    prove_rate_limit
    prove_tenants
    prove_gre
    prove_bgp_paths
    prove_bgp_proxy_stop
    prove_bgp_freeze
    prove_bgp_drain
    prove_bgp_undrain
    prove_bgp_rolling_restart
    status_table
    say "results"
    python3 "$repo/lab/report.py" --results "$state/results" --seconds $(( $(date +%s) - started ))
}

case "${1:-}" in
    up) up ;;
    prove) prove ;;
    down) down ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
esac
