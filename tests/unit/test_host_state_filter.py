"""plugins/filter/host_state.py: what lets the roles skip a copy, template, file or systemd task whose
host state is already as wanted (one find and one systemctl show per role instead of two module runs per
file and one per unit).

- file_sha1 is the checksum ansible.builtin.find and stat report for the same bytes;
- file_differs is false only for the exact path, type, checksum, mode, owner and group;
- systemd_units reads the blocks of one `systemctl show` of several units;
- the roles guard every file and unit task with them, and read their files and units once.
"""
import hashlib
import pathlib

import pytest
import yaml

from ansible.errors import AnsibleFilterError

from ansible_collections.anycast.edge.plugins.filter.host_state import (
    FilterModule, file_differs, file_sha1, systemd_units)

ROLES = pathlib.Path(__file__).resolve().parents[2] / "roles"
UNIT = {"path": "/etc/systemd/system/a.service", "isreg": True, "isdir": False, "checksum": "c" * 40,
        "mode": "0644", "pw_name": "root", "gr_name": "root"}
DIRECTORY = {"path": "/etc/a", "isreg": False, "isdir": True, "mode": "0750", "pw_name": "root", "gr_name": "proxy"}


def test_filters_are_registered():
    assert FilterModule().filters() == {"file_sha1": file_sha1, "file_differs": file_differs,
                                        "systemd_units": systemd_units}


def test_file_sha1_is_the_hosts_checksum_of_the_same_bytes(tmp_path):
    data = bytes(range(256)) * 1000   # binary, like the proxy's zipapp
    path = tmp_path / "program.pyz"
    path.write_bytes(data)
    assert file_sha1(str(path)) == hashlib.sha1(data).hexdigest()
    with pytest.raises(AnsibleFilterError, match="cannot read"):
        file_sha1(str(tmp_path / "missing"))


def test_file_differs_only_when_something_would_change():
    found = [DIRECTORY, UNIT]
    assert file_differs(found, UNIT["path"], "c" * 40, "0644", "root", "root") is False
    assert file_differs(found, UNIT["path"]) is False                      # nothing asked, nothing compared
    assert file_differs(found, DIRECTORY["path"], None, "0750", "root", "proxy", True) is False
    assert file_differs(found, UNIT["path"], "d" * 40, "0644", "root", "root") is True    # content
    assert file_differs(found, UNIT["path"], "c" * 40, "0640", "root", "root") is True    # mode
    assert file_differs(found, UNIT["path"], "c" * 40, "0644", "proxy", "root") is True   # owner
    assert file_differs(found, UNIT["path"], "c" * 40, "0644", "root", "proxy") is True   # group
    assert file_differs(found, "/etc/systemd/system/b.service") is True                   # missing
    assert file_differs(found, DIRECTORY["path"]) is True                                 # a directory, not a file
    assert file_differs(found, UNIT["path"], directory=True) is True                      # a file, not a directory
    with pytest.raises(AnsibleFilterError, match="files list"):
        file_differs({"files": found}, UNIT["path"])


def test_systemd_units_reads_one_show_of_several_units():
    stdout = ("Id=bird.service\nActiveState=active\nUnitFileState=enabled\n\n"
              "Id=missing.service\nActiveState=inactive\nUnitFileState=\n\n"
              "Id=x.socket\nActiveState=active\nUnitFileState=enabled\nExecStart={ path=/bin/a=b }\n")
    units = systemd_units(stdout)
    assert sorted(units) == ["bird.service", "missing.service", "x.socket"]
    assert units["bird.service"] == {"Id": "bird.service", "ActiveState": "active", "UnitFileState": "enabled"}
    assert units["missing.service"]["UnitFileState"] == ""
    assert units["x.socket"]["ExecStart"] == "{ path=/bin/a=b }"     # split at the first '=' only
    assert systemd_units("") == {}
    with pytest.raises(AnsibleFilterError, match="systemctl show"):
        systemd_units(None)


def tasks(path):
    return yaml.safe_load((ROLES / path).read_text())


def action(task):
    if "block" in task:
        return "block"
    return next(key for key in task if key.startswith("ansible.builtin.") or key.startswith("anycast.edge."))


@pytest.mark.parametrize("path, found, shown", [
    ("transparent_proxy/tasks/service.yml", "__transparent_proxy_found", "__transparent_proxy_units_now"),
    ("bgp/tasks/main.yml", "__bgp_found", "__bgp_units_now"),
])
def test_roles_read_files_and_units_once_and_guard_every_task_that_writes(path, found, shown):
    role_tasks = tasks(path)
    assert [action(t) for t in role_tasks].count("ansible.builtin.find") == 1
    shows = [t for t in role_tasks if action(t) == "ansible.builtin.command"
             and "show" in str(t["ansible.builtin.command"]["argv"])]
    assert len(shows) == 1
    for task in role_tasks:
        if action(task) in ("ansible.builtin.copy", "ansible.builtin.template", "ansible.builtin.file"):
            assert found in str(task.get("when")), task["name"]
            # a removal runs where the path is there; everything else where the file differs
            absent = task[action(task)].get("state") == "absent"
            assert absent or "file_differs" in str(task["when"]), task["name"]
        if action(task) == "ansible.builtin.systemd_service":
            assert shown in str(task.get("when")), task["name"]


def test_edge_restore_reads_its_unit_once_and_runs_once_per_play_run():
    main = tasks("edge_restore/tasks/main.yml")
    template = next(t for t in main if action(t) == "ansible.builtin.template")
    assert "file_differs" in template["when"]
    assert main[-1]["ansible.builtin.set_fact"] == {"edge_restore_applied_before_units": "{{ edge_restore_before_units }}"}
    proxy = tasks("transparent_proxy/tasks/main.yml")
    include = next(t for t in proxy if action(t) == "ansible.builtin.include_role")
    assert include["ansible.builtin.include_role"]["name"] == "anycast.edge.edge_restore"
    assert "edge_restore_applied_before_units" in include["when"]
    networkd = tasks("edge_restore/tasks/networkd.yml")
    probes = [t for t in networkd if action(t) == "ansible.builtin.command"]
    assert len(probes) == 1 and "anycast-edge-restore.service" in probes[0]["ansible.builtin.command"]["argv"]
