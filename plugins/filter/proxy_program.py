# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side steps of the transparent_proxy role: the proxy as one artifact, and its
configuration checked by the proxy's own validation before anything changes on a host."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tempfile
import zipfile

from ansible.errors import AnsibleFilterError

# The archive's entry point: `python3 anycast-proxy.pyz ...` runs the package's command line.
ENTRY = b'"""anycast-proxy, as one zipapp."""\nimport sys\n\nfrom anycast_proxy.cli import main\n\nsys.exit(main())\n'
# Fixed metadata: the same sources always make the same bytes, on any controller.
EPOCH = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644 << 16


def zipapp_bytes(source):
    """The archive of the package directory SOURCE: sorted members, fixed times and modes, stored
    (not deflated: zlib's output may differ between zlib versions)."""
    package = os.path.basename(os.path.normpath(source))
    members = {'__main__.py': ENTRY}
    for directory, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, os.path.dirname(os.path.normpath(source)))
                with open(path, 'rb') as handle:
                    members[relative.replace(os.sep, '/')] = handle.read()
    if not any(name.startswith(package + '/') for name in members):
        raise AnsibleFilterError('proxy_zipapp: %s holds no Python files' % source)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_STORED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.external_attr = FILE_MODE
            info.create_system = 3
            archive.writestr(info, members[name])
    return buffer.getvalue()


def proxy_zipapp(source, build_dir):
    """Build the zipapp of SOURCE in BUILD_DIR (on the controller) and return its path.

    The file is named by its content's digest, so a build is written once, every host's templating
    (in Ansible's forks) names the same file, and a second build of the same sources changes nothing.
    """
    data = zipapp_bytes(source)
    build_dir = os.path.expanduser(build_dir)
    path = os.path.join(build_dir, 'anycast-proxy-%s.pyz' % hashlib.sha256(data).hexdigest()[:16])
    if os.path.exists(path):
        return path
    try:
        os.makedirs(build_dir, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=build_dir, prefix='.anycast-proxy-')
        with os.fdopen(handle, 'wb') as out:
            out.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise AnsibleFilterError('proxy_zipapp: cannot write the proxy program into %s: %s'
                                 % (build_dir, exc.strerror or exc))
    return path


def _config_module(source):
    path = os.path.join(source, 'config.py')
    spec = importlib.util.spec_from_file_location('anycast_edge_proxy_config', path)
    if spec is None or not os.path.exists(path):
        raise AnsibleFilterError('proxy_config_errors: no config.py in %s' % source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def proxy_config_errors(config, source, names=None):
    """[] when the proxy in SOURCE accepts CONFIG (a dict), else its error, with the key renamed by
    NAMES ({top-level key: variable}) so that it names the variable the user set."""
    module = _config_module(source)
    try:
        module.parse_config(config)
    except module.ConfigError as exc:
        message = str(exc)
        for key, variable in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
            if message == key or message.startswith((key + '.', key + '[', key + ':')):
                message = variable + message[len(key):]
                break
        return [message]
    return []


class FilterModule(object):
    def filters(self):
        return {
            'proxy_zipapp': proxy_zipapp,
            'proxy_config_errors': proxy_config_errors,
        }
