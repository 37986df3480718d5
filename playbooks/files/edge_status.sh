#!/bin/sh
# Read-only facts of an edge host that anycast.edge.edge_info does not report,
# for playbooks/status.yml, as KEY=VALUE lines.
# usage: edge_status.sh SERVICE METRICS_ADDRESS
#   proxy=STATE          systemctl is-active of the proxy service
#   connections=N        anycast_proxy_connections_total summed over routes (metrics on)
#   kernel=RELEASE       uname -r
#   ip_gre=yes|no        GRE loaded, built in or installable
service=$1
metrics=$2

echo "proxy=$(systemctl is-active "$service" 2>/dev/null || true)"
release=$(uname -r)
echo "kernel=$release"
if [ -d /sys/module/ip_gre ] ||
   grep -qs '/ip_gre\.ko' "/lib/modules/$release/modules.builtin" "/lib/modules/$release/modules.dep"; then
    echo "ip_gre=yes"
else
    echo "ip_gre=no"
fi
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
