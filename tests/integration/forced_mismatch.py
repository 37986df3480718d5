"""anyip_route whose IPv4 routes ask for preferred source 0.0.0.0 past validation (which refuses it).

The kernel writes such a route without a preferred source, so the read-back can never match: the
real kernel behaviour that forces the engine's failed-read-back path. Run as a module is run (JSON
arguments on stdin); tests/integration/test_anyip_tproxy.py uses it.
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._anyip import AnyipRoutes
from ansible_collections.anycast.edge.plugins.module_utils._engine import run_module
from ansible_collections.anycast.edge.plugins.modules.anyip_route import ARGUMENT_SPEC


class UnspecifiedSource(AnyipRoutes):
    def desired(self):
        routes = super().desired()
        for route in routes:
            if route.network.version == 4:
                route.prefsrc = '0.0.0.0'
        return routes


if __name__ == '__main__':
    run_module(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True), UnspecifiedSource)
