"""The bgp role's variables: defaults and argument specs agree (every entry point), names follow the
public `bgp_` / private `__bgp_` rule, and the defaults with the two required variables make a plan
without errors, whose health configuration the daemon accepts."""

import importlib.util
import pathlib

import pytest
import yaml

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.anycast.edge.plugins.filter.bgp import bgp_plan
from test_role_argspec import disagreements, validation_spec

ROLE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "bgp"


def load(relative):
    with open(ROLE / relative, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def defaults():
    return load("defaults/main.yml")


@pytest.fixture(scope="module")
def specs():
    return load("meta/argument_specs.yml")["argument_specs"]


def test_defaults_and_every_entry_point_agree(defaults, specs):
    for entry, spec in specs.items():
        shared = {name: value for name, value in defaults.items() if name in spec["options"]}
        assert disagreements(shared, spec["options"]) == [], entry
    documented = set(name for spec in specs.values() for name in spec["options"])
    assert sorted(set(defaults) - documented) == []


def test_the_required_variables_are_checked_by_the_spec(defaults, specs):
    validator = ArgumentSpecValidator(validation_spec(specs["main"]["options"]))
    errors = " ".join(validator.validate(dict(defaults)).error_messages)
    assert "bgp_local_as" in errors and "bgp_neighbors" in errors
    main = {name: value for name, value in defaults.items() if name in specs["main"]["options"]}
    good = dict(main, bgp_local_as=64512, bgp_neighbors=[{"address": "198.51.100.1", "remote_as": 64500}])
    assert validator.validate(good).error_messages == []


def test_public_and_private_names(defaults, specs):
    names = list(defaults) + [n for spec in specs.values() for n in spec["options"]]
    assert [n for n in names if not n.startswith("bgp_")] == []
    assert [n for n in load("vars/main.yml") if not n.startswith("__bgp_")] == []


def test_the_defaults_make_a_plan_the_health_daemon_accepts(defaults):
    spec = importlib.util.spec_from_file_location("health", ROLE / "files" / "anycast_edge_health.py")
    health = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health)
    plan = bgp_plan(dict(defaults, bgp_local_as=64512, bgp_router_id="198.51.100.11",
                         bgp_neighbors=[{"address": "198.51.100.1", "remote_as": 64500}],
                         transparent_proxy_routes=[{"destination": "192.0.2.0/24", "origin": "10.0.0.1:80"}]))
    assert plan["errors"] == []
    config = health.Config(plan["health"])
    assert [g.name for g in config.groups] == ["proxy"]
    assert config.graceful_shutdown == defaults["bgp_graceful_shutdown_time"]
    assert config.drain_file == defaults["bgp_drain_file"]
