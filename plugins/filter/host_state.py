# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side checks that let a role skip the tasks whose file is already as wanted.

A role reads its files once with the module anycast.edge.install_info (one module run for all
of them, with checksums, and for its units, user and group) and runs a copy, template or file
task only where file_differs() says so: a no-op run then costs one module run instead of two
per file (stat, then file for the attributes). file_sha1() gives the checksum copy would
compare with, for a file on the controller.
"""

from __future__ import annotations

import hashlib
import os

from ansible.errors import AnsibleFilterError


def file_sha1(path):
    """SHA-1 of the controller file PATH, as stat, copy and find report a host file's checksum."""
    digest = hashlib.sha1()
    try:
        with open(os.path.expanduser(path), 'rb') as handle:
            for block in iter(lambda: handle.read(1 << 16), b''):
                digest.update(block)
    except OSError as exc:
        raise AnsibleFilterError('file_sha1: cannot read %s: %s' % (path, exc.strerror or exc))
    return digest.hexdigest()


def file_differs(found, path, checksum=None, mode=None, owner=None, group=None, directory=False):
    """True unless FOUND (the files list of anycast.edge.install_info or ansible.builtin.find) has PATH
    as wanted: a directory or a regular file with CHECKSUM (sha1), MODE ('0644'), OWNER and GROUP
    (names); None means any."""
    if not isinstance(found, list):
        raise AnsibleFilterError('file_differs: expected the files list of install_info or find, got %s'
                                 % type(found).__name__)
    entry = next((f for f in found if isinstance(f, dict) and f.get('path') == path), None)
    if entry is None:
        return True
    if directory != bool(entry.get('isdir')) or (not directory and not entry.get('isreg')):
        return True
    if checksum is not None and entry.get('checksum') != checksum:
        return True
    if mode is not None and entry.get('mode') != mode:
        return True
    if owner is not None and entry.get('pw_name') != owner:
        return True
    return group is not None and entry.get('gr_name') != group


class FilterModule(object):
    def filters(self):
        return {'file_sha1': file_sha1, 'file_differs': file_differs}
