# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""BIRD 2's control socket (what ``birdc`` speaks), and readers of what it answers.

``anycast.edge.bgp_speaker`` applies a configuration through it and
``anycast.edge.edge_info`` reads the BGP state with :func:`bgp_state` (sessions, exported prefixes, and what the health daemon
withholds).

The protocol: BIRD greets with ``0001 ...``; every reply line starts with a
four-digit code followed by ``-`` (more lines follow) or a space (the last line),
or with a space alone (continuation of the previous code). Codes 8xxx and 9xxx
are errors (doc/reply_codes in BIRD's source).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError

RECONFIGURED = ('0003', '0004', '0005')   # done, in progress, queued
RECONFIGURATION_IN_PROGRESS = 'Reconfiguration in progress'


class BirdError(EdgeError):
    """BIRD could not be reached or refused a command; the text is for the user."""


class BirdUnavailable(BirdError):
    """No BIRD answers on the socket (not running, or not started yet)."""


class BirdControl(object):
    def __init__(self, path, timeout=30.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise BirdUnavailable('BIRD is not running (control socket %s: %s)' % (path, exc.strerror))
        except OSError as exc:
            self.sock.close()
            raise BirdError('cannot reach BIRD on %s: %s' % (path, exc.strerror or exc))
        self.reader = self.sock.makefile('rb')
        self.greeting = self._reply()[-1][1]

    def close(self):
        self.reader.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _reply(self):
        """[(code, text)] of one reply; continuation lines carry the code before them."""
        lines, code = [], None
        while True:
            raw = self.reader.readline()
            if not raw:
                raise BirdError('BIRD closed the control socket %s in the middle of a reply' % self.path)
            line = raw.decode('utf-8', 'replace').rstrip('\n')
            if len(line) >= 5 and line[:4].isdigit() and line[4] in '- ':
                code = line[:4]
                lines.append((code, line[5:]))
                if line[4] == ' ':
                    return lines
            elif line.startswith(' ') or line == '':
                lines.append((code, line[1:]))
            else:
                raise BirdError('unexpected line from BIRD: %r' % line)

    def command(self, text):
        """Run one command; return its [(code, text)] lines. Errors (8xxx, 9xxx) raise BirdError."""
        self.sock.sendall(text.encode() + b'\n')
        lines = self._reply()
        code, last = lines[-1]
        if code[0] in '89':
            raise BirdError('BIRD refused `%s`: %s' % (text, ' '.join(t for c, t in lines if c == code).strip()))
        return lines

    def configure(self, wait=30.0):
        """`configure`: BIRD re-reads the file it was started with. Waits for the reconfiguration to finish."""
        lines = self.command('configure')
        codes = [c for c, _t in lines]
        if not any(c in RECONFIGURED for c in codes):
            raise BirdError('BIRD did not reconfigure: %s' % ' / '.join(t for _c, t in lines))
        deadline = time.monotonic() + wait
        while RECONFIGURATION_IN_PROGRESS in self.status().get('state', ''):
            if time.monotonic() > deadline:
                raise BirdError('BIRD is still reconfiguring after %d s' % wait)
            time.sleep(0.05)
        return ' / '.join(t for _c, t in lines)

    def status(self):
        """`show status`: {'version', 'router_id', 'last_reboot', 'last_reconfiguration', 'state'}."""
        found = {}
        for code, text in self.command('show status'):
            if code == '1000':
                found['version'] = text.strip()
            elif code == '0013':
                found['state'] = text.strip()
            for key, pattern in (('router_id', r'Router ID is (\S+)'), ('last_reboot', r'Last reboot on (.+)'),
                                 ('last_reconfiguration', r'Last reconfiguration on (.+)')):
                match = re.match(pattern, text.strip())
                if match:
                    found[key] = match.group(1).strip()
        return found

    def protocols(self):
        """`show protocols all`: [{name, proto, table, state, since, info, ...details}] in BIRD's order."""
        return parse_protocols(self.command('show protocols all'))

    def bfd_sessions(self):
        return parse_bfd_sessions(self.command('show bfd sessions'))

    def exported(self, protocol):
        """Prefixes BIRD exports to PROTOCOL now."""
        return parse_route_prefixes(self.command('show route export %s' % protocol))


# Since in `show protocols`: the date and time our configuration's timeformat gives,
# or whatever single token another configuration gives.
_PROTOCOL_LINE = re.compile(r'^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+'
                            r'(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?|\S+)\s*(.*?)\s*$')
_DETAIL_KEYS = {
    'BGP state': 'bgp_state', 'Neighbor address': 'neighbor_address', 'Neighbor AS': 'neighbor_as',
    'Local AS': 'local_as', 'Neighbor ID': 'neighbor_id', 'Source address': 'source_address',
    'Last error': 'last_error', 'Hold timer': 'hold_timer', 'Keepalive timer': 'keepalive_timer',
}
_ROUTES = re.compile(r'Routes:\s+(\d+) imported,(?: (\d+) filtered,)? (\d+) exported')


def parse_protocols(lines):
    protocols, current, channel = [], None, None
    for code, text in lines:
        if code == '1002':
            match = _PROTOCOL_LINE.match(text)
            if not match:
                continue
            current = dict(zip(('name', 'proto', 'table', 'state', 'since', 'info'), match.groups()))
            current['channels'] = {}
            channel = None
            protocols.append(current)
        elif code == '1006' and current is not None:
            stripped = text.strip()
            if stripped.startswith('Channel '):
                channel = current['channels'].setdefault(stripped.split()[1], {})
                continue
            key, sep, value = stripped.partition(':')
            if not sep:
                continue
            routes = _ROUTES.match(stripped)
            if routes and channel is not None:
                channel['imported'] = int(routes.group(1))
                channel['exported'] = int(routes.group(3))
            elif key == 'State' and channel is not None:
                channel['state'] = value.strip()
            elif key in _DETAIL_KEYS and channel is None:
                current[_DETAIL_KEYS[key]] = value.strip()
    return protocols


def parse_bfd_sessions(lines):
    """`show bfd sessions` -> {neighbor address: {'interface', 'state', 'since'}}."""
    sessions = {}
    for code, text in lines:
        fields = text.split()
        # the header, and the name of each BFD protocol ("anycast_bfd:"), are not sessions
        if code != '1020' or len(fields) < 6 or fields[0] == 'IP' or fields[0].endswith(':'):
            continue
        sessions[fields[0]] = {'interface': fields[1], 'state': fields[2], 'since': ' '.join(fields[3:-2])}
    return sessions


def parse_route_prefixes(lines):
    """The networks of a `show route` listing (first column of each route's first line)."""
    found = []
    for code, text in lines:
        if code != '1007' or not text or text[0].isspace() or text.startswith('Table '):
            continue
        found.append(text.split()[0])
    return found


def read_health_status(path):
    """The health daemon's status file, or None when it is missing or unreadable."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def bgp_state(control_socket, health_status_file, warnings):
    """What edge_info reports under ``bgp``: BIRD's BGP sessions, what each one exports, and what
    the health daemon withholds and why; None on a host without either. Never raises: an unreachable
    BIRD is reported in ``error``. Appends a warning per session down and per prefix withheld for
    its health (not for a drain) to WARNINGS."""
    health = read_health_status(health_status_file)
    if health is None and not os.path.exists(control_socket):
        return None
    state = {'running': False, 'sessions': [], 'announced': [], 'withheld': [], 'drained': None, 'error': None,
             'health': None}
    if health is not None:
        state['drained'] = health.get('drained')
        state['health'] = {'updated': health.get('updated'), 'restore': health.get('restore')}
        for group in health.get('groups', []):
            if group.get('state') != 'announced':
                for prefix in group.get('prefixes', []):
                    state['withheld'].append({'prefix': prefix, 'group': group.get('name'),
                                              'state': group.get('state'), 'reason': group.get('reason')})
    else:
        state['error'] = 'no status from the health daemon (%s)' % health_status_file
    try:
        with BirdControl(control_socket, timeout=10) as bird:
            state['running'] = True
            bfd = bird.bfd_sessions()
            announced = set()
            for proto in bird.protocols():
                if proto['proto'] != 'BGP':
                    continue
                neighbor = proto.get('neighbor_address')
                exported = bird.exported(proto['name']) if proto.get('bgp_state') == 'Established' else []
                announced.update(exported)
                state['sessions'].append({
                    'name': proto['name'], 'neighbor': neighbor, 'remote_as': _int(proto.get('neighbor_as')),
                    'state': proto.get('bgp_state') or proto['state'], 'since': proto['since'],
                    'info': proto['info'], 'last_error': proto.get('last_error'),
                    'bfd': (bfd.get(neighbor) or {}).get('state'),
                    'exported': len(exported)})
            state['announced'] = sorted(announced)
    except BirdError as exc:
        state['error'] = str(exc)
    for session in state['sessions']:
        if session['state'] != 'Established':
            warnings.append('BGP session %s to %s is %s since %s%s' % (
                session['name'], session['neighbor'], session['state'], session['since'],
                ' (%s)' % session['last_error'] if session['last_error'] else ''))
    for item in state['withheld']:
        if item['reason'] != 'drained' and item['state'] != 'graceful-shutdown':
            warnings.append('%s (%s) is not announced: %s' % (item['prefix'], item['group'], item['reason']))
    if state['error']:
        warnings.append('BGP: %s' % state['error'])
    return state


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
