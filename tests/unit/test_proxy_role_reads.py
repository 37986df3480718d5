"""What the transparent_proxy role runs on a host, decided from its one anycast.edge.install_info read
(packages included; worked out by Ansible itself with tests/unit/render_playbook.py on the lab's ael-edge1; no host is contacted):

- on a bare host every task that writes runs, then the self-test and the record of what it passed with;
  only the packages it lacks are installed;
- on a host that holds the group, the user, the program, the configuration, running units and a record of
  this very configuration, none of those runs: no group, user, copy, template or systemd task, no self-test;
- a user that differs in a field the user task sets, or a missing group, is created or corrected;
- the self-test runs again where the record differs (other routes) or where this run changed the TPROXY
  rules or the AnyIP prefixes; the record is rewritten only where it differs.
"""
import hashlib
import json
import os
import sys

from test_playbooks import INVENTORIES, RENDER, run

PLAYBOOK = """- name: The proxy role on one host
  hosts: all
  gather_facts: false
  tasks:
    - name: Run the role
      ansible.builtin.import_role:
        name: anycast.edge.transparent_proxy
"""
FACTS = {"system": "Linux", "kernel": "6.1.0", "distribution": "Debian", "distribution_major_version": "12",
         "distribution_version": "12.8", "service_mgr": "systemd"}
PACKAGES = {name: {"version": "1", "arch": "amd64"} for name in (
    "iproute2", "iptables", "nftables", "python3", "python3-pyroute2", "python3-iptables", "python3-nftables")}
BARE = {"files": [], "units": {}, "users": {}, "groups": {}, "packages": PACKAGES}
PROBE = ["tproxy_ipv4=yes", "ipv6=yes", "tproxy_ipv6=yes", "xt_tproxy=yes", "unprivileged_port_start=1024"]
UNCHANGED = {"changed": False}
USER = {"uid": 998, "gid": 998, "group": "anycast-proxy", "comment": "anycast.edge transparent proxy",
        "home": "/nonexistent", "shell": "/usr/sbin/nologin"}
UNITS = ["anycast-proxy-drain.socket", "anycast-proxy.socket", "anycast-proxy.service"]


def role_on(tmp_path, installed, **registered):
    """{task name: task} of the role on ael-edge1 given INSTALLED (install_info's result) and the results the
    role's earlier tasks registered (unchanged unless given)."""
    playbook = tmp_path / "proxy.yml"
    playbook.write_text(PLAYBOOK)
    extra = {"ansible_check_mode": False, "ansible_facts": FACTS,
             "__transparent_proxy_kernel_probe": {"stdout_lines": PROBE},
             "__transparent_proxy_installed": installed,
             "__transparent_proxy_package_install": {"changed": False, "skipped": True},
             "__transparent_proxy_self_test": {"changed": False, "rc": 0, "stdout": "self-test: OK"}}
    for name in ("socket_unit", "units", "started", "anyip", "tproxy"):
        extra["__transparent_proxy_" + name] = registered.get(name, UNCHANGED)
    output = run(os.path.basename(sys.executable), RENDER, str(playbook), INVENTORIES["lab"], "ael-edge1",
                 json.dumps(extra))
    (play,) = json.loads(output)
    return {task["name"].split(" : ", 1)[-1]: task for task in play["tasks"]}


WRITES = ["Install the missing packages", "Create the service group", "Create the service user", "Create the program directory",
          "Install the proxy program", "Create the configuration directory", "Write the proxy configuration",
          "Enable the drain service's socket", "Enable the listeners' socket", "Enable and start the proxy service",
          "Check the routes end to end with the proxy's self-test", "Record what the self-test passed with"]


def entry(path, checksum=None, mode="0644", group="root", directory=False):
    return {"path": path, "isdir": directory, "isreg": not directory, "islnk": False, "mode": mode,
            "pw_name": "root", "gr_name": group, **({"checksum": checksum} if checksum else {})}


def converged(record):
    """install_info's result on a host the role has converged, RECORD being the content of its self-test record."""
    passed = json.loads(record)
    files = [entry("/opt/anycast-edge", mode="0755", directory=True),
             entry("/opt/anycast-edge/anycast-proxy.pyz", passed["program_sha1"]),
             entry("/etc/anycast-proxy", mode="0750", group="anycast-proxy", directory=True),
             entry("/etc/anycast-proxy/config.json", passed["config_sha1"], "0640", "anycast-proxy"),
             entry("/opt/anycast-edge/self-test.passed", sha1(record))]
    units = {name: {"Id": name, "LoadState": "loaded", "UnitFileState": "enabled", "ActiveState": "active"}
             for name in UNITS}
    return {"files": files, "units": units, "users": {"anycast-proxy": USER}, "groups": {"anycast-proxy": {"gid": 998}},
            "packages": PACKAGES}


def sha1(text):
    return hashlib.sha1(text.encode()).hexdigest()


def runs(tasks):
    return [name for name in WRITES if tasks[name]["runs"]]


def test_a_bare_host_gets_everything_then_the_self_test_and_its_record(tmp_path):
    tasks = role_on(tmp_path, BARE)
    assert runs(tasks) == WRITES[1:]     # the packages were there
    tasks = role_on(tmp_path, dict(BARE, packages={k: v for k, v in PACKAGES.items() if k != "python3-nftables"}))
    assert tasks["Install the missing packages"]["args"]["name"] == ["python3-nftables"]
    record = json.loads(tasks["Record what the self-test passed with"]["args"]["content"])
    assert sorted(record) == ["config_sha1", "prefixes", "program_sha1", "tproxy_rules"]
    assert record["prefixes"] == ["192.0.2.0/24", "2001:db8:100::/64"]


def test_a_converged_host_runs_none_of_them(tmp_path):
    bare = role_on(tmp_path, BARE)
    record = bare["Record what the self-test passed with"]["args"]["content"]
    tasks = role_on(tmp_path, converged(record))
    assert runs(tasks) == []
    # what it still reads and applies: its one read, and the kernel state (each module reads once)
    assert tasks["Read the proxy's packages, installed files, units, user and group"]["runs"]
    assert tasks["Send the routes' connections to the proxy with TPROXY"]["runs"]


def test_a_user_or_group_that_differs_is_corrected(tmp_path):
    record = role_on(tmp_path, BARE)[
        "Record what the self-test passed with"]["args"]["content"]
    installed = converged(record)
    installed["users"]["anycast-proxy"] = dict(USER, shell="/bin/bash")
    assert runs(role_on(tmp_path, installed)) == ["Create the service user"]
    installed = converged(record)
    installed["users"]["anycast-proxy"] = dict(USER, group="nogroup", gid=65534)
    del installed["groups"]["anycast-proxy"]
    assert runs(role_on(tmp_path, installed)) == ["Create the service group", "Create the service user"]


def test_the_self_test_runs_again_where_its_record_differs_or_the_rules_changed(tmp_path):
    record = role_on(tmp_path, BARE)[
        "Record what the self-test passed with"]["args"]["content"]
    other_routes = json.loads(record)
    other_routes["prefixes"] = ["192.0.2.0/25"]
    installed = converged(record)
    installed["files"][-1]["checksum"] = sha1(json.dumps(other_routes))
    assert runs(role_on(tmp_path, installed)) == ["Check the routes end to end with the proxy's self-test",
                                                  "Record what the self-test passed with"]
    for registered in ({"tproxy": {"changed": True}}, {"anyip": {"changed": True}}):
        assert runs(role_on(tmp_path, converged(record), **registered)) == [
            "Check the routes end to end with the proxy's self-test"]
