"""plugins/filter/host_state.py: what lets the roles skip a copy, template, file, systemd, user or group
task whose host state is already as wanted (one anycast.edge.install_info per role instead of two module
runs per file and one per unit, user or group).

- file_sha1 is the checksum ansible.builtin.find and stat report for the same bytes;
- file_differs is false only for the exact path, type, checksum, mode, owner and group;
- the roles read their files, units, user and group once and guard every task that writes with it.
"""
import hashlib
import pathlib

import pytest
import yaml

from ansible.errors import AnsibleFilterError

from ansible_collections.anycast.edge.plugins.filter.host_state import FilterModule, file_differs, file_sha1

ROLES = pathlib.Path(__file__).resolve().parents[2] / "roles"
UNIT = {"path": "/etc/systemd/system/a.service", "isreg": True, "isdir": False, "checksum": "c" * 40,
        "mode": "0644", "pw_name": "root", "gr_name": "root"}
DIRECTORY = {"path": "/etc/a", "isreg": False, "isdir": True, "mode": "0750", "pw_name": "root", "gr_name": "proxy"}


def test_filters_are_registered():
    assert FilterModule().filters() == {"file_sha1": file_sha1, "file_differs": file_differs}


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


def tasks(path):
    return yaml.safe_load((ROLES / path).read_text())


def role_main(role):
    """The tasks of ROLE's tasks/main.yml with its import_tasks files in place (what runs, in order)."""
    flat = []
    for task in tasks(role + "/tasks/main.yml"):
        if "ansible.builtin.import_tasks" in task:
            flat.extend(tasks(role + "/tasks/" + task["ansible.builtin.import_tasks"]))
        else:
            flat.append(task)
    return flat


def action(task):
    if "block" in task:
        return "block"
    return next(key for key in task if key.startswith("ansible.builtin.") or key.startswith("anycast.edge."))


def reads(role_tasks):
    """The tasks of ROLE_TASKS that read the host: install_info, find, stat, command, shell, getent."""
    return [t for t in role_tasks if action(t) in ("anycast.edge.install_info", "ansible.builtin.find",
                                                   "ansible.builtin.stat", "ansible.builtin.command",
                                                   "ansible.builtin.shell", "ansible.builtin.getent")]


@pytest.mark.parametrize("role, installed, shown", [
    ("transparent_proxy", "__transparent_proxy_installed", "__transparent_proxy_units_now"),
    ("bgp", "__bgp_installed", "__bgp_units_now"),
])
def test_roles_read_packages_files_units_and_accounts_once_and_guard_every_task_that_writes(role, installed, shown):
    role_tasks = role_main(role)
    # besides the preflight's kernel probe (a script) and the proxy's self-test (a check after the changes), one read
    role_tasks = [t for t in role_tasks if "--self-test" not in str(t.get("ansible.builtin.command"))]
    assert [action(t) for t in reads(role_tasks)] == ["anycast.edge.install_info"]
    assert not [t for t in role_tasks if action(t) == "ansible.builtin.package_facts"]
    read = reads(role_tasks)[0]
    assert read["register"] == installed and "packages" in read["anycast.edge.install_info"]
    writes = ("ansible.builtin.copy", "ansible.builtin.template", "ansible.builtin.file", "ansible.builtin.apt",
              "ansible.builtin.systemd_service", "ansible.builtin.user", "ansible.builtin.group")
    assert all(role_tasks.index(read) < i for i, t in enumerate(role_tasks) if action(t) in writes)
    for task in role_tasks:
        if action(task) == "ansible.builtin.apt":
            assert installed + "['packages']" in str(task.get("when")), task["name"]
        if action(task) in ("ansible.builtin.copy", "ansible.builtin.template", "ansible.builtin.file"):
            assert installed in str(task.get("when")), task["name"]
            # a removal runs where the path is there; everything else where the file differs
            absent = task[action(task)].get("state") == "absent"
            assert absent or "file_differs" in str(task["when"]), task["name"]
        if action(task) == "ansible.builtin.systemd_service":
            assert shown in str(task.get("when")), task["name"]
        if action(task) in ("ansible.builtin.user", "ansible.builtin.group"):
            assert installed in str(task.get("when")), task["name"]


def test_the_proxy_user_is_compared_on_what_the_user_task_sets():
    """An existing user is left alone only when the user task would change nothing: group, comment, home, shell."""
    service = tasks("transparent_proxy/tasks/service.yml")
    user = next(t for t in service if action(t) == "ansible.builtin.user")["ansible.builtin.user"]
    compared = yaml.safe_load((ROLES / "transparent_proxy/vars/main.yml").read_text())["__transparent_proxy_user_entry"]
    set_by_task = {key for key in user if key not in ("name", "system", "create_home", "state")}
    assert set_by_task == set(compared)
    assert all(user[key] == "{{ __transparent_proxy_user_entry['%s'] }}" % key for key in compared)


def test_edge_restore_reads_its_unit_once_and_runs_once_per_play_run():
    main = tasks("edge_restore/tasks/main.yml")
    template = next(t for t in main if action(t) == "ansible.builtin.template")
    assert "file_differs" in template["when"]
    assert main[-1]["ansible.builtin.set_fact"] == {"edge_restore_applied_before_units": "{{ edge_restore_before_units }}"}
    proxy = tasks("transparent_proxy/tasks/main.yml")
    include = next(t for t in proxy if action(t) == "ansible.builtin.include_role")
    assert include["ansible.builtin.include_role"]["name"] == "anycast.edge.edge_restore"
    assert "edge_restore_applied_before_units" in include["when"]
    # one read before anything: the unit file and the state of the unit and of networkd
    assert [action(t) for t in reads(main)] == ["anycast.edge.install_info"] and reads(main)[0] is main[0]
    read = main[0]["anycast.edge.install_info"]
    assert read["paths"] == ["/etc/systemd/system/anycast-edge-restore.service"]
    assert sorted(read["units"]) == ["anycast-edge-restore.service", "systemd-networkd.service"]
    # networkd.yml reads nothing more but the systemd version, and that only where the guard goes
    networkd = tasks("edge_restore/tasks/networkd.yml")
    assert reads(networkd) == []
    guard = next(t for t in networkd if action(t) == "block")
    assert [t["ansible.builtin.command"]["argv"] for t in reads(guard["block"])] == [["systemctl", "--version"]]
