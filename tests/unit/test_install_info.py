"""plugins/modules/install_info.py: what a role has installed, read in one module run.

- each file is the entry ansible.builtin.find gives for it (what file_differs compares), checksum included;
- missing paths, users and groups are left out; nothing is followed or changed;
- units come from one `systemctl show` (split at the first '=' only); a failing systemctl is a sentence;
- packages come from one dpkg-query, installed as package_facts counts them (an installed version);
- input that cannot name a file, unit or property is refused naming the parameter;
- the module process returns all of it (real files, the real name service, the real systemctl).
"""
import grp
import hashlib
import json
import os
import pwd
import subprocess
import sys

import pytest

from ansible.modules.find import statinfo

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError, ParamError
from ansible_collections.anycast.edge.plugins.module_utils._install_info import (
    check, parse_packages, parse_units, read_files, read_groups, read_packages, read_units, read_users)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "etc").mkdir(mode=0o750)
    (tmp_path / "etc" / "app.conf").write_bytes(b"listen = 1234\n")
    os.chmod(tmp_path / "etc" / "app.conf", 0o640)
    (tmp_path / "link.conf").symlink_to(tmp_path / "etc" / "app.conf")
    return tmp_path


def test_each_file_is_finds_entry_with_its_checksum(tree):
    paths = [str(tree / "etc"), str(tree / "etc" / "app.conf"), str(tree / "link.conf")]
    entries = read_files(paths)
    assert [e["path"] for e in entries] == paths
    for entry in entries:
        found = statinfo(os.lstat(entry["path"]))     # find does not follow links either
        assert {key: found[key] for key in entry if key not in ("path", "checksum")} \
            == {key: value for key, value in entry.items() if key not in ("path", "checksum")}
    directory, regular, link = entries
    assert directory["isdir"] and directory["mode"] == "0750" and "checksum" not in directory
    assert regular["isreg"] and regular["mode"] == "0640"
    assert regular["checksum"] == hashlib.sha1(b"listen = 1234\n").hexdigest()
    assert link["islnk"] and not link["isreg"] and "checksum" not in link
    assert regular["pw_name"] == pwd.getpwuid(os.getuid()).pw_name


def test_missing_paths_are_left_out_and_each_path_is_read_once(tree):
    conf = str(tree / "etc" / "app.conf")
    assert [e["path"] for e in read_files([str(tree / "nothing"), conf, conf])] == [conf]
    assert read_files([]) == []


SHOW = ("Id=bird.service\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n\n"
        "Id=missing.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n\n"
        "Id=x.socket\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\nExecStart={ path=/bin/a=b }\n")


def test_units_are_read_with_one_systemctl_show():
    calls = []

    def run_command(argv):
        calls.append(argv)
        return 0, SHOW, ""
    units = read_units(run_command, ["bird.service", "missing.service", "x.socket"], ["UnitFileState", "Id"])
    assert calls == [["systemctl", "show", "--property=Id,UnitFileState", "bird.service", "missing.service",
                      "x.socket"]]
    assert sorted(units) == ["bird.service", "missing.service", "x.socket"]
    assert units["bird.service"] == {"Id": "bird.service", "LoadState": "loaded", "ActiveState": "active",
                                     "UnitFileState": "enabled"}
    assert units["missing.service"]["LoadState"] == "not-found"
    assert units["x.socket"]["ExecStart"] == "{ path=/bin/a=b }"     # split at the first '=' only
    assert read_units(run_command, [], ["Id"]) == {} and len(calls) == 1    # no units, no systemctl
    assert parse_units("") == {}


def test_a_failing_systemctl_is_a_sentence_naming_the_command():
    with pytest.raises(EdgeError, match=r"^systemctl show --property=Id a.service failed \(exit status 1\): "
                                        r"Failed to connect to bus"):
        read_units(lambda argv: (1, "", "Failed to connect to bus\n"), ["a.service"], ["Id"])


def test_users_and_groups_as_the_name_service_has_them():
    root = pwd.getpwuid(0)
    users = read_users([root.pw_name, "ae-no-such-user", root.pw_name])
    assert users == {root.pw_name: {"uid": 0, "gid": root.pw_gid, "group": grp.getgrgid(root.pw_gid).gr_name,
                                    "comment": root.pw_gecos, "home": root.pw_dir, "shell": root.pw_shell}}
    group = grp.getgrgid(0).gr_name
    assert read_groups([group, "ae-no-such-group"]) == {group: {"gid": 0}}


def dpkg_installed():
    """The package names dpkg-query lists as installed on this machine (Debian, like the managed hosts)."""
    out = subprocess.run(["dpkg-query", "--show", "--showformat=${Package} ${db:Status-Abbrev}\n"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()[1] == "ii"}


def test_packages_are_read_with_one_dpkg_query_for_the_names_asked():
    installed = dpkg_installed()
    assert {"bash", "python3"} <= installed
    calls = []

    def run_command(argv):      # AnsibleModule.run_command's contract, the real dpkg-query
        calls.append(argv)
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    packages = read_packages(run_command, ["bash", "ae-no-such-package", "python3", "bash"])
    assert len(calls) == 1 and calls[0][3:] == ["bash", "ae-no-such-package", "python3"]
    assert sorted(packages) == ["bash", "python3"]
    version = subprocess.run(["dpkg-query", "--show", "--showformat=${Version}", "bash"], capture_output=True,
                             text=True, check=True).stdout
    assert packages["bash"]["version"] == version and packages["bash"]["arch"]
    assert read_packages(run_command, []) == {} and len(calls) == 1     # no names, no dpkg-query


def test_a_package_counts_as_installed_where_it_has_an_installed_version():
    out = "".join("%s\tamd64\t1.0\t%s\n" % (name, status) for name, status in [
        ("installed", "ii "), ("held", "hi "), ("unpacked", "iU "), ("half-configured", "iF "),
        ("triggers", "it "), ("removed-keeping-config", "rc "), ("not-installed", "un "), ("purged", "pn ")])
    assert sorted(parse_packages(out)) == ["half-configured", "held", "installed", "triggers", "unpacked"]


def test_a_failing_dpkg_query_is_a_sentence():
    with pytest.raises(EdgeError, match=r"^dpkg-query --show bash failed \(exit status 2\): "
                                        r"dpkg-query: error: parsing file"):
        read_packages(lambda argv: (2, "", "dpkg-query: error: parsing file '/var/lib/dpkg/status'\n"), ["bash"])


@pytest.mark.parametrize("params, param", [
    ({"paths": ["/etc/app", "etc/app.conf"]}, "paths[1]"),
    ({"units": ["app.service", "--all"]}, "units[1]"),
    ({"units": ["app service"]}, "units[0]"),
    ({"units": [""]}, "units[0]"),
    ({"properties": ["Id,ExecStart"]}, "properties[0]"),
    ({"packages": ["bash", "python3*"]}, "packages[1]"),
    ({"packages": ["--list"]}, "packages[0]"),
])
def test_input_that_cannot_name_a_file_unit_or_property_is_refused(params, param):
    given = dict({"paths": [], "units": [], "properties": ["Id"], "packages": []}, **params)
    with pytest.raises(ParamError) as refused:
        check(given)
    assert str(refused.value).startswith(param + ": ")


def run_module(args):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "build", "collections"))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "plugins", "modules", "install_info.py")],
                          input=json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=True)}),
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    return json.loads(proc.stdout)


def test_the_module_reads_everything_in_one_run_and_changes_nothing(tree):
    conf = str(tree / "etc" / "app.conf")
    root, group = pwd.getpwuid(0).pw_name, grp.getgrgid(0).gr_name
    before = sorted(os.listdir(tree)), os.stat(conf).st_mtime_ns
    result = run_module({"paths": [conf, str(tree / "nothing")], "users": [root, "ae-no-such-user"],
                         "groups": [group], "packages": ["bash", "ae-no-such-package"]})
    assert not result.get("failed"), result
    assert result["changed"] is False
    assert [f["path"] for f in result["files"]] == [conf] and result["files"][0]["checksum"]
    assert list(result["users"]) == [root] and list(result["groups"]) == [group]
    assert list(result["packages"]) == ["bash"]
    assert result["units"] == {}
    assert (sorted(os.listdir(tree)), os.stat(conf).st_mtime_ns) == before
    result = run_module({"units": ["ae-no-such.service"]})
    if os.path.isdir("/run/systemd/system"):     # booted with systemd
        assert result["units"]["ae-no-such.service"]["LoadState"] == "not-found", result
    else:
        assert result["failed"] and result["msg"].startswith("systemctl show --property=Id,LoadState,UnitFileState,"
                                                             "ActiveState ae-no-such.service failed"), result
