"""plugins/filter/proxy_program.py: the proxy as one deterministic zipapp, and its config check.

- the same sources make the same bytes (whatever the files' times and the directory's order),
  and the archive runs the proxy with nothing but python3;
- a change of one source file makes another archive (another name: content-addressed);
- proxy_config_errors gives the proxy's own message, naming the role variable.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from ansible.errors import AnsibleFilterError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bad_input_cases import PROXY_CASES  # noqa: E402
from ansible_collections.anycast.edge.plugins.filter.proxy_program import (FilterModule, proxy_config_errors,
                                                                           proxy_zipapp, zipapp_bytes)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, 'roles', 'transparent_proxy', 'files', 'anycast_proxy')
NAMES = {'routes': 'transparent_proxy_routes', 'defaults': 'transparent_proxy_route_defaults'}


def copy_of_source(tmp_path):
    copy = tmp_path / 'src' / 'anycast_proxy'
    shutil.copytree(SOURCE, str(copy), ignore=shutil.ignore_patterns('__pycache__'))
    return str(copy)


def test_the_same_sources_make_the_same_bytes(tmp_path):
    copy = copy_of_source(tmp_path)
    first = zipapp_bytes(copy)
    for name in os.listdir(copy):
        os.utime(os.path.join(copy, name), (1, 1))      # other times, as another checkout has
    os.makedirs(os.path.join(copy, '__pycache__'))       # and byte code lying around
    with open(os.path.join(copy, '__pycache__', 'x.pyc'), 'wb') as handle:
        handle.write(b'junk')
    assert zipapp_bytes(copy) == first


def test_members_are_sorted_stored_and_timeless(tmp_path):
    path = proxy_zipapp(SOURCE, str(tmp_path))
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names) and names[0] == '__main__.py'
    assert 'anycast_proxy/cli.py' in names and not any('__pycache__' in n for n in names)
    assert {(i.date_time, i.compress_type, i.external_attr >> 16) for i in infos} == {
        ((1980, 1, 1, 0, 0, 0), zipfile.ZIP_STORED, 0o100644)}


def test_the_archive_is_named_by_its_content_and_written_once(tmp_path):
    copy = copy_of_source(tmp_path)
    build = str(tmp_path / 'build')
    first = proxy_zipapp(copy, build)
    mtime = os.stat(first).st_mtime_ns
    assert proxy_zipapp(copy, build) == first and os.stat(first).st_mtime_ns == mtime
    with open(os.path.join(copy, 'routing.py'), 'a') as handle:
        handle.write('\n# changed\n')
    second = proxy_zipapp(copy, build)
    assert second != first and os.path.basename(second).startswith('anycast-proxy-')
    assert sorted(os.listdir(build)) == sorted([os.path.basename(first), os.path.basename(second)])


def test_the_archive_runs_the_proxy_with_the_system_python(tmp_path):
    path = proxy_zipapp(SOURCE, str(tmp_path))
    config = tmp_path / 'config.json'
    config.write_text(json.dumps({'routes': [{'destination': '192.0.2.0/24', 'origins': ['10.0.0.1:80', '10.0.0.2:80']}]}))
    proc = subprocess.run(['/usr/bin/python3', '-B', '-I', path, '--check-config', str(config)],
                          capture_output=True, text=True, check=False, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert 'OK (1 routes' in proc.stdout


def test_an_unwritable_build_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    with pytest.raises(AnsibleFilterError, match='cannot write the proxy program into'):
        proxy_zipapp(SOURCE, str(blocker / 'sub'))


def test_config_errors_name_the_role_variable():
    assert proxy_config_errors({'routes': [{'destination': '192.0.2.0/24', 'origin': '10.0.0.1'}]}, SOURCE, NAMES) == []
    bad = {'routes': [{'destination': '192.0.2.0/24', 'origins': []}]}
    assert proxy_config_errors(bad, SOURCE, NAMES) == [
        'transparent_proxy_routes[0].origins: must list at least one origin']
    bad = {'defaults': {'balance': 'random'}, 'routes': [{'destination': '192.0.2.0/24', 'origin': '10.0.0.1'}]}
    assert proxy_config_errors(bad, SOURCE, NAMES)[0].startswith('transparent_proxy_route_defaults.balance: expected one of')


@pytest.mark.parametrize('config,key,words', PROXY_CASES, ids=[c[1] for c in PROXY_CASES])
def test_the_role_refuses_every_bad_proxy_configuration_naming_its_variable(config, key, words):
    errors = proxy_config_errors(config, SOURCE, NAMES)
    renamed = key.replace('routes', NAMES['routes'], 1) if key.startswith('routes') else \
        key.replace('defaults', NAMES['defaults'], 1) if key.startswith('defaults') else key
    assert len(errors) == 1 and errors[0].startswith(renamed + ': ') and words in errors[0], errors


def test_the_filters_are_registered():
    assert set(FilterModule().filters()) == {'proxy_zipapp', 'proxy_config_errors'}
