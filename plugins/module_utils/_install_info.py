# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a role has installed on a host, read in one module run (the module install_info).

Files are reported as ansible.builtin.find reports them (the keys the controller's
file_differs filter compares), units as the properties one `systemctl show` prints,
users and groups as the name service has them, packages as dpkg has them. Nothing is
changed.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError, ParamError

# What a role's systemd tasks decide on, unless the task asks for other properties.
DEFAULT_PROPERTIES = ('Id', 'LoadState', 'UnitFileState', 'ActiveState')


def check(params):
    """Refuse what cannot name a file or a unit, naming the parameter, before anything is read."""
    for index, path in enumerate(params['paths']):
        if not os.path.isabs(path):
            raise ParamError('paths[%d]' % index, "'%s' is not an absolute path" % path)
    for index, unit in enumerate(params['units']):
        # systemctl would read a leading '-' as an option
        if not unit or unit.startswith('-') or any(c.isspace() for c in unit):
            raise ParamError('units[%d]' % index, "'%s' is not a unit name" % unit)
    for index, name in enumerate(params['properties']):
        if not name.isalnum():
            raise ParamError('properties[%d]' % index, "'%s' is not a unit property name" % name)
    for index, name in enumerate(params['packages']):
        # dpkg-query would read a leading '-' as an option, and a pattern as many packages
        if not name or name.startswith('-') or any(c in name for c in '*?[] \t'):
            raise ParamError('packages[%d]' % index, "'%s' is not a package name" % name)


def _name(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return ''


def sha1(path):
    digest = hashlib.sha1()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 16), b''):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path):
    """PATH as find reports it (not following a symbolic link), with the SHA-1 of a regular file;
    None when it does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EdgeError('cannot read %s: %s' % (path, exc.strerror))
    entry = {
        'path': path,
        'mode': '%04o' % stat.S_IMODE(st.st_mode),
        'isdir': stat.S_ISDIR(st.st_mode),
        'isreg': stat.S_ISREG(st.st_mode),
        'islnk': stat.S_ISLNK(st.st_mode),
        'uid': st.st_uid,
        'gid': st.st_gid,
        'pw_name': _name(pwd.getpwuid, st.st_uid),
        'gr_name': _name(grp.getgrgid, st.st_gid),
        'size': st.st_size,
    }
    if entry['isreg']:
        try:
            entry['checksum'] = sha1(path)
        except OSError as exc:
            raise EdgeError('cannot read %s: %s' % (path, exc.strerror))
    return entry


def read_files(paths):
    """The entries of the PATHS that exist, in the order given (each once)."""
    entries = (file_entry(path) for path in dict.fromkeys(paths))
    return [entry for entry in entries if entry is not None]


def parse_units(stdout):
    """{Id: {property: value}} from `systemctl show --property=Id,... UNIT...` (one block of NAME=VALUE
    lines per unit, separated by empty lines)."""
    units = {}
    for block in stdout.strip().split('\n\n'):
        properties = dict(line.split('=', 1) for line in block.splitlines() if '=' in line)
        if properties.get('Id'):
            units[properties['Id']] = properties
    return units


def read_units(run_command, units, properties):
    """The PROPERTIES of UNITS (Id always among them) from one `systemctl show`; RUN_COMMAND is
    AnsibleModule.run_command. A unit systemd does not know has LoadState=not-found."""
    if not units:
        return {}
    wanted = ['Id'] + [name for name in properties if name != 'Id']
    argv = ['systemctl', 'show', '--property=' + ','.join(wanted)] + list(units)
    rc, out, err = run_command(argv)
    if rc != 0:
        raise EdgeError('%s failed (exit status %d): %s' % (' '.join(argv), rc, (err or out).strip()))
    return parse_units(out)


# dpkg-query's second status letter (db:Status-Abbrev) of a package that has no installed version:
# not-installed and config-files. Every other state has one, as package_facts (python-apt) counts it.
NO_VERSION = ('n', 'c')
DPKG_FORMAT = '${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\n'


def parse_packages(stdout):
    """{name: {version, arch}} of the installed packages in dpkg-query's output (DPKG_FORMAT)."""
    packages = {}
    for line in stdout.splitlines():
        fields = line.split('\t')
        if len(fields) == 4 and len(fields[3]) >= 2 and fields[3][1] not in NO_VERSION:
            packages.setdefault(fields[0], {'version': fields[2], 'arch': fields[1]})
    return packages


def read_packages(run_command, names):
    """The installed packages among NAMES (Debian's dpkg), from one dpkg-query; RUN_COMMAND is
    AnsibleModule.run_command. A name dpkg has never heard of is not installed."""
    if not names:
        return {}
    argv = ['dpkg-query', '--show', '--showformat=' + DPKG_FORMAT] + list(dict.fromkeys(names))
    rc, out, err = run_command(argv)
    unknown = [line for line in err.splitlines() if line.strip()
               and 'no packages found matching' not in line]
    # exit status 1: some name is unknown to dpkg (said on stderr), the others are listed
    if rc not in (0, 1) or unknown:
        raise EdgeError('dpkg-query --show %s failed (exit status %d): %s'
                        % (' '.join(argv[3:]), rc, (err or out).strip()))
    return parse_packages(out)


def read_users(names):
    """{name: {uid, gid, group, comment, home, shell}} of the NAMES that exist (group: the primary
    group's name, empty when it has none)."""
    users = {}
    for name in dict.fromkeys(names):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        users[name] = {'uid': entry.pw_uid, 'gid': entry.pw_gid, 'group': _name(grp.getgrgid, entry.pw_gid),
                       'comment': entry.pw_gecos, 'home': entry.pw_dir, 'shell': entry.pw_shell}
    return users


def read_groups(names):
    """{name: {gid}} of the NAMES that exist."""
    groups = {}
    for name in dict.fromkeys(names):
        try:
            groups[name] = {'gid': grp.getgrnam(name).gr_gid}
        except KeyError:
            continue
    return groups


def read(module):
    """The module's result: files, units, users, groups; never changed."""
    params = module.params
    check(params)
    return {
        'changed': False,
        'files': read_files(params['paths']),
        'units': read_units(module.run_command, params['units'], params['properties']),
        'users': read_users(params['users']),
        'groups': read_groups(params['groups']),
        'packages': read_packages(module.run_command, params['packages']),
    }
