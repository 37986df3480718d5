"""anycast-proxy: a transparent TCP/UDP proxy in front of origins.

Connections and datagrams that the kernel steers to the listeners with the
TPROXY target keep their original destination; the proxy picks a route by
that destination and relays to the route's origin.
"""

__version__ = "0.1.0"
