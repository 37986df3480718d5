"""The transparent_proxy role's variables: defaults, argument spec and preflight plan agree.

- every public default is documented in meta/argument_specs.yml with the same value,
- every documented option has a default or is required (and then has no default),
- the defaults pass the role's own argument spec,
- names follow the public `transparent_proxy_` / private `__transparent_proxy_` rule,
- the route options, choices and configuration keys are the ones the proxy program knows.
"""
import copy
import importlib.util
import pathlib
import re

import pytest
import yaml

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

ROLE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "transparent_proxy"
PUBLIC = "transparent_proxy_"
PRIVATE = "__transparent_proxy_"
# Keys of argument_specs.yml that are documentation, not validation.
DOC_KEYS = {"description", "short_description", "version_added", "notes", "author"}


def load(relative):
    with open(ROLE / relative, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def defaults():
    return load("defaults/main.yml")


@pytest.fixture(scope="module")
def options():
    return load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]


def disagreements(defaults, options):
    """Sentences for every way defaults and options differ; empty when they agree."""
    problems = []
    for name, value in defaults.items():
        if name not in options:
            problems.append("%s has a default but is not documented" % name)
            continue
        spec = options[name]
        if spec.get("required"):
            problems.append("%s is required, so it must not have a default" % name)
        elif "default" not in spec:
            problems.append("%s: the spec documents no default, defaults/main.yml says %r" % (name, value))
        elif spec["default"] != value or type(spec["default"]) is not type(value):
            problems.append("%s: spec default %r, defaults/main.yml %r" % (name, spec["default"], value))
    for name, spec in options.items():
        if name not in defaults and not spec.get("required"):
            problems.append("%s is documented, neither required nor given a default" % name)
        if spec.get("required") and "default" in spec:
            problems.append("%s is required and has a default in the spec" % name)
    return problems


def validation_spec(options):
    """argument_specs options without the documentation keys, as ArgumentSpecValidator wants."""
    spec = {}
    for name, option in options.items():
        option = {k: v for k, v in option.items() if k not in DOC_KEYS}
        if "options" in option:
            option["options"] = validation_spec(option["options"])
        spec[name] = option
    return spec


def test_defaults_and_argument_spec_agree(defaults, options):
    assert disagreements(defaults, options) == []


@pytest.mark.parametrize("mutate, expected", [
    (lambda d, o: d.update(transparent_proxy_listen_port=4321), "transparent_proxy_listen_port: spec default"),
    (lambda d, o: d.update(transparent_proxy_undocumented=1), "transparent_proxy_undocumented has a default"),
    (lambda d, o: d.pop("transparent_proxy_workers"), "transparent_proxy_workers is documented"),
    (lambda d, o: o["transparent_proxy_workers"].pop("default"), "transparent_proxy_workers: the spec documents"),
    (lambda d, o: d.update(transparent_proxy_log_connections="true"), "transparent_proxy_log_connections"),
    (lambda d, o: d.update(transparent_proxy_routes=[]), "transparent_proxy_routes is required"),
])
def test_the_agreement_check_sees_each_kind_of_mismatch(defaults, options, mutate, expected):
    changed_defaults, changed_options = copy.deepcopy(defaults), copy.deepcopy(options)
    mutate(changed_defaults, changed_options)
    assert any(p.startswith(expected) for p in disagreements(changed_defaults, changed_options))


def test_defaults_pass_the_roles_own_argument_spec(defaults):
    spec = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    params = dict(defaults, transparent_proxy_routes=[{"destination": "192.0.2.0/24", "origin": "10.0.0.1:80"}])
    result = ArgumentSpecValidator(validation_spec(spec)).validate(params)
    assert result.error_messages == []


def test_routes_are_required_and_checked_by_the_spec(defaults, options):
    validator = ArgumentSpecValidator(validation_spec(options))
    assert "transparent_proxy_routes" in " ".join(validator.validate(dict(defaults)).error_messages)
    bad_route = dict(defaults, transparent_proxy_routes=[{"destination": "192.0.2.0/24", "origin": "x",
                                                          "proxy_protocol": "v3"}])
    assert "proxy_protocol" in " ".join(validator.validate(bad_route).error_messages)


def test_public_and_private_names(defaults, options):
    assert [n for n in list(defaults) + list(options) if not n.startswith(PUBLIC)] == []
    private = load("vars/main.yml")
    assert private and [n for n in private if not n.startswith(PRIVATE)] == []


# --- the role documents the proxy's route keys and choices as the program knows them ------

def proxy_config_module():
    spec = importlib.util.spec_from_file_location(
        "anycast_proxy_config", ROLE / "files" / "anycast_proxy" / "config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_route_options_are_the_proxys_route_keys(options):
    config = proxy_config_module()
    route_options = options["transparent_proxy_routes"]["options"]
    assert set(route_options) == set(config.ROUTE_KEYS)
    assert route_options["proxy_protocol"]["choices"] == list(config.PROXY_PROTOCOLS)
    assert route_options["protocol"]["choices"] == list(config.PROTOCOLS)
    assert route_options["balance"]["choices"] == list(config.BALANCE_METHODS)
    assert options["transparent_proxy_log_level"]["choices"] == list(config.LOG_LEVELS)


def test_config_keys_the_role_writes_are_the_proxys():
    expression = load("vars/main.yml")["__transparent_proxy_config"]
    written = set(re.findall(r"'(\w+)':", expression))
    assert {"listen", "routes", "metrics", "workers"} <= written
    assert written <= set(proxy_config_module().TOP_KEYS)
