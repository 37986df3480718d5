#!/bin/sh
# Read-only status of an edge host for playbooks/status.yml, as KEY=VALUE lines.
# usage: edge_status.sh SERVICE METRICS_ADDRESS CHAIN...
#   tproxy=CHAIN:IPV4_RULES/IPV6_RULES   per TPROXY chain (mangle table)
#   conntrack=COUNT/MAX                  of this network namespace
#   proxy=STATE                          systemctl is-active of the proxy service
#   connections=N                        anycast_proxy_connections_total, summed (when metrics are on)
service=$1
metrics=$2
shift 2

count_rules() {  # count_rules SAVE_COMMAND CHAIN
    "$1" -t mangle 2>/dev/null > "$tmp" || true
    grep -c -- "^-A $2 " "$tmp" || true
}

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for chain in "$@"; do
    echo "tproxy=$chain:$(count_rules iptables-save "$chain")/$(count_rules ip6tables-save "$chain")"
done
echo "conntrack=$(cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo '?')/$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo '?')"
echo "proxy=$(systemctl is-active "$service" 2>/dev/null || true)"
if [ -n "$metrics" ]; then
    /usr/bin/python3 - "$metrics" <<'PY' 2>/dev/null || echo "connections=?"
import sys
import urllib.request

body = urllib.request.urlopen('http://%s/metrics' % sys.argv[1], timeout=3).read().decode()
total = sum(float(line.rsplit(' ', 1)[1]) for line in body.splitlines()
            if line.startswith('anycast_proxy_connections_total'))
print('connections=%d' % total)
PY
fi
