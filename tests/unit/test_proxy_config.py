"""The proxy's configuration file as a whole (roles/transparent_proxy/files/anycast_proxy/config.py).

Refusals of single keys are in tests/bad_input_cases.py (PROXY_CASES); here is what is about the
file: its size, its nesting, the command's exit status, and that validation stays linear.
"""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = os.path.join(ROOT, 'roles', 'transparent_proxy', 'files')
sys.path.insert(0, FILES)

from anycast_proxy.config import MAX_CONFIG_BYTES, ConfigError, load_config, parse_config  # noqa: E402

PACKAGE = os.path.join(FILES, 'anycast_proxy')


def check_config(path):
    proc = subprocess.run([sys.executable, '-B', PACKAGE, '--check-config', str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, proc.stderr


def routes(count, **keys):
    return [dict({'name': 'r%d' % i, 'destination': '10.%d.%d.0/24' % (i // 256 % 256, i % 256),
                  'origin': '172.16.0.1:80'}, **keys) for i in range(count)]


def test_dev_zero_is_refused_without_reading_it_all():
    status, message = check_config('/dev/zero')
    assert status == 2 and '(file): /dev/zero is larger than %d MiB' % (MAX_CONFIG_BYTES >> 20) in message, message


def test_a_directory_is_refused(tmp_path):
    status, message = check_config(tmp_path)
    assert status == 2 and '(file): cannot read' in message and 'Is a directory' in message, message


def test_deep_nesting_is_refused_not_a_traceback(tmp_path):
    path = tmp_path / 'config.json'
    path.write_text('[' * 200000 + ']' * 200000)
    status, message = check_config(path)
    assert status == 2 and 'nests arrays or objects too deeply' in message and 'Traceback' not in message, message


@pytest.mark.parametrize('port', ['\u00b2', '\u0661\u0662\u0663\u0664', '\u0968\u0966'])
def test_a_unicode_digit_port_exits_2_naming_the_key(tmp_path, port):
    path = tmp_path / 'config.json'
    path.write_text(json.dumps({'listen': ['127.0.0.1:' + port], 'routes': routes(1)}))
    status, message = check_config(path)
    assert status == 2 and 'listen[0]: ' in message and 'Traceback' not in message, message


def test_a_port_of_5000_digits_exits_2_not_a_traceback(tmp_path):
    # int() refuses strings of more than 4300 digits with a ValueError of its own.
    path = tmp_path / 'config.json'
    path.write_text(json.dumps({'routes': routes(1, origin='10.0.2.2:' + '9' * 5000)}))
    status, message = check_config(path)
    assert status == 2 and 'routes[0].origin: ' in message and '(5009 characters)' in message, message


def test_nan_written_as_json_is_refused(tmp_path):
    path = tmp_path / 'config.json'
    path.write_text('{"routes": [{"destination": "192.0.2.0/24", "origin": "10.0.0.1:80", "connect_timeout": NaN}]}')
    status, message = check_config(path)
    assert status == 2 and 'routes[0].connect_timeout: expected a finite number, got nan' in message, message


def test_a_huge_route_name_is_refused_and_not_echoed():
    name = 'x' * (1 << 20)
    with pytest.raises(ConfigError) as caught:
        parse_config({'routes': routes(1, name=name)})
    assert str(caught.value) == 'routes[0].name: at most 128 characters, got 1048576'
    with pytest.raises(ConfigError) as caught:
        parse_config({'routes': routes(1, name='"' + name)})
    assert len(str(caught.value)) < 200


def test_validation_is_linear_in_the_number_of_routes():
    # The duplicate check used to compare each route with every earlier one: 10,000 routes took 11 s.
    # 20,000 routes would take 4 times as long as that; linear, they take well under a second.
    started = time.perf_counter()
    config = parse_config({'routes': routes(20000)})
    assert len(config.routes) == 20000 and time.perf_counter() - started < 5
    duplicate = routes(20000) + [dict(routes(1)[0], name='again')]
    with pytest.raises(ConfigError, match=r'^routes\[20000\]\.destination: routes\[0\] already covers'):
        parse_config({'routes': duplicate})


def test_a_file_of_just_under_the_cap_is_read(tmp_path):
    path = tmp_path / 'config.json'
    text = json.dumps({'routes': routes(1)})
    path.write_text(text + ' ' * (MAX_CONFIG_BYTES - len(text)))
    assert len(load_config(str(path)).routes) == 1
