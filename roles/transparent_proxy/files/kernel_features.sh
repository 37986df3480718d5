#!/bin/sh
# Report the kernel features the transparent proxy needs, one "name=yes|no" per line.
# Read-only: looks at /proc and the module tree, loads nothing.
release="$(uname -r)"

# A feature is there when the running kernel lists it, or when it can be loaded
# (a module file) or is built in according to the kernel's config.
kernel_config() {
    if [ -r /proc/config.gz ]; then
        gzip -dc /proc/config.gz 2>/dev/null
    elif [ -r "/boot/config-$release" ]; then
        cat "/boot/config-$release"
    fi
}

has() {  # has PROC_FILE NAME MODULE CONFIG_SYMBOL
    if [ -r "$1" ] && grep -qx "$2" "$1"; then return 0; fi
    if [ -d "/lib/modules/$release" ] && \
        find "/lib/modules/$release" -name "$3.ko*" 2>/dev/null | grep -q .; then return 0; fi
    kernel_config | grep -Eq "^$4=(y|m)$"
}

answer() { if "$@"; then echo yes; else echo no; fi; }

echo "tproxy_ipv4=$(answer has /proc/net/ip_tables_targets TPROXY nf_tproxy_ipv4 CONFIG_NF_TPROXY_IPV4)"
if [ -d /proc/sys/net/ipv6 ]; then
    echo "ipv6=yes"
    echo "tproxy_ipv6=$(answer has /proc/net/ip6_tables_targets TPROXY nf_tproxy_ipv6 CONFIG_NF_TPROXY_IPV6)"
else
    echo "ipv6=no"
    echo "tproxy_ipv6=no"
fi
# IP_TRANSPARENT listeners and the TPROXY target (xt_TPROXY) come together.
echo "xt_tproxy=$(answer has /proc/net/ip_tables_targets TPROXY xt_TPROXY CONFIG_NETFILTER_XT_TARGET_TPROXY)"
# For the route plan: below this port the proxy needs CAP_NET_BIND_SERVICE (IPv6 included).
echo "unprivileged_port_start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo 1024)"
