"""plugins/filter/route_plan.py: the transparent_proxy preflight's view of the routes, on the controller.

- routes become AnyIP prefixes (collapsed) and TPROXY rules to the listener of their family;
- what does not fit is named by its role variable, without raising (the preflight asserts on it);
- CAP_NET_BIND_SERVICE is asked for only where the host's first unprivileged port requires it;
- the preflight calls it through Ansible, with the port the host's kernel probe read.
"""
import pathlib

import pytest
import yaml

from ansible.errors import AnsibleFilterError

from ansible_collections.anycast.edge.plugins.filter.route_plan import FilterModule, plan, route_plan

ROLE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "transparent_proxy"


LISTEN = ["127.0.0.1", "::1"]


def test_plan_derives_prefixes_and_rules_from_routes():
    result = plan([
        {"destination": "192.0.2.0/25", "origin": "o:80"},
        {"destination": "192.0.2.128/25", "origin": "o", "ports": 443},
        {"destination": "192.0.2.128/25", "origin": "o", "ports": "8000-8100", "protocol": "udp"},
        {"destination": "2001:db8::/64", "origin": "o", "ports": "1-65535"},
    ], [], LISTEN, 1234)
    assert result["errors"] == []
    assert result["prefixes_ipv4"] == ["192.0.2.0/24"]  # the two halves collapse into one local route
    assert result["prefixes_ipv6"] == ["2001:db8::/64"]
    assert result["tproxy_rules"] == [
        {"destination": "192.0.2.0/25", "protocol": "tcp", "on_ip": "127.0.0.1", "on_port": 1234},
        {"destination": "192.0.2.128/25", "protocol": "tcp", "on_ip": "127.0.0.1", "on_port": 1234, "ports": "443"},
        {"destination": "192.0.2.128/25", "protocol": "udp", "on_ip": "127.0.0.1", "on_port": 1234,
         "ports": "8000-8100"},
        {"destination": "2001:db8::/64", "protocol": "tcp", "on_ip": "::1", "on_port": 1234},
    ]


def test_plan_names_a_prefix_without_a_route_and_a_route_outside_the_prefixes():
    result = plan([
        {"destination": "192.0.2.0/24", "origin": "o"},
        {"destination": "203.0.113.0/24", "origin": "o"},
    ], ["192.0.2.0/23", "198.51.100.0/24"], LISTEN, 1234)
    assert result["prefixes_ipv4"] == ["192.0.2.0/23", "198.51.100.0/24"]
    assert len(result["errors"]) == 2
    assert "198.51.100.0/24 has no route" in result["errors"][0]
    assert "203.0.113.0/24 is not inside any of transparent_proxy_prefixes" in result["errors"][1]


@pytest.mark.parametrize("routes, listen_port, first_unprivileged_port, needed", [
    ([{"destination": "192.0.2.0/24", "origin": "o", "protocol": "udp"}], 1234, 1024, True),   # every port
    ([{"destination": "192.0.2.0/24", "origin": "o", "protocol": "udp", "ports": 53}], 1234, 1024, True),
    ([{"destination": "192.0.2.0/24", "origin": "o", "protocol": "udp", "ports": "1000-1100"}], 1234, 1024, True),
    ([{"destination": "192.0.2.0/24", "origin": "o", "protocol": "udp", "ports": "5300-5400"}], 1234, 1024, False),
    ([{"destination": "192.0.2.0/24", "origin": "o"}], 1234, 1024, False),   # TCP answers on the accepted socket
    ([{"destination": "192.0.2.0/24", "origin": "o"}], 999, 1024, True),     # the listeners' own port
    ([{"destination": "192.0.2.0/24", "origin": "o", "protocol": "udp", "ports": 53}], 999, 0, False),
])
def test_plan_says_when_the_proxy_binds_a_port_that_needs_cap_net_bind_service(routes, listen_port,
                                                                               first_unprivileged_port, needed):
    result = plan(routes, [], LISTEN, listen_port, first_unprivileged_port)
    assert result["errors"] == []
    assert result["needs_net_bind_service"] is needed


@pytest.mark.parametrize("route, listen, message", [
    ({"destination": "192.0.2.1/24", "origin": "o"}, LISTEN, "transparent_proxy_routes[0].destination"),
    ({"destination": "192.0.2.0/24", "origin": "o", "ports": "70000"}, LISTEN, "transparent_proxy_routes[0].ports"),
    ({"destination": "192.0.2.0/24", "origin": "o", "ports": "90-80"}, LISTEN, "transparent_proxy_routes[0].ports"),
    ({"destination": "2001:db8::/64", "origin": "o"}, ["127.0.0.1"], "has no IPv6 address"),
    ({"destination": "192.0.2.0/24", "origin": "o"}, ["localhost"], "transparent_proxy_listen_addresses"),
])
def test_plan_refuses_bad_input_naming_the_variable(route, listen, message):
    result = plan([route], [], listen, 1234)
    assert any(message in e for e in result["errors"]), result["errors"]


def test_filter_takes_the_roles_request_and_the_hosts_first_unprivileged_port():
    request = {"routes": [{"destination": "192.0.2.0/24", "origin": "o", "protocol": "udp", "ports": 53}],
               "prefixes": [], "listen_addresses": LISTEN, "listen_port": 1234}
    assert FilterModule().filters()["route_plan"] is route_plan
    result = route_plan(request)
    assert result["prefixes_ipv4"] == ["192.0.2.0/24"] and result["errors"] == []
    assert result["needs_net_bind_service"] is True
    # what the kernel probe prints is text: net.ipv4.ip_unprivileged_port_start=0 grants every port
    assert route_plan(request, "0")["needs_net_bind_service"] is False
    # missing keys are empty lists (the role's defaults), not errors
    assert route_plan({"listen_port": 1234}) == {"prefixes_ipv4": [], "prefixes_ipv6": [], "tproxy_rules": [],
                                                 "needs_net_bind_service": False, "errors": []}


@pytest.mark.parametrize("request_, port, message", [
    (["192.0.2.0/24"], 1024, "expected a dictionary"),
    ({"routes": [], "listen_port": 1234}, "many", "first_unprivileged_port must be a port number"),
])
def test_filter_refuses_what_is_not_a_request(request_, port, message):
    with pytest.raises(AnsibleFilterError, match=message):
        route_plan(request_, port)


def test_preflight_plans_on_the_controller_with_the_probed_port():
    """No program of the role's runs the plan on the host any more: the preflight's one host round trip is
    the kernel probe, which also reports the first unprivileged port the filter is given."""
    tasks = yaml.safe_load((ROLE / "tasks" / "preflight.yml").read_text())
    assert not (ROLE / "files" / "route_plan.py").exists()
    scripts = [t["ansible.builtin.script"]["cmd"] for t in tasks if "ansible.builtin.script" in t]
    assert scripts == ["kernel_features.sh"]
    plan_task = next(t for t in tasks if t["name"] == "Work out AnyIP prefixes and TPROXY rules from the routes")
    assert "anycast.edge.route_plan(" in plan_task["ansible.builtin.set_fact"]["__transparent_proxy_plan"]
    assert "unprivileged_port_start" in (ROLE / "files" / "kernel_features.sh").read_text()
    names = [t["name"] for t in tasks]
    assert names.index("Look for the kernel features TPROXY needs") < names.index(plan_task["name"]) \
        < names.index("Assert that the routes, prefixes and listeners fit together")
