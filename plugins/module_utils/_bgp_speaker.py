# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bgp_speaker domain: BIRD's live configuration file and the BIRD that reads it.

The state is the live file's text (plus what the kernel serves, when the input does not
say, and BIRD's BGP sessions); the plan is the whole new text, or nothing when the file
already is what the input renders. A change is checked by BIRD itself (``bird -p -c`` on a
candidate beside the live file, in check mode too), then the candidate replaces the live
file atomically and a running BIRD is told to ``configure``; if BIRD refuses, the previous
file is put back. ``_bgp.py`` holds the input and the text, ``_bird.py`` the control socket.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import shlex
import subprocess
import tempfile

from ansible_collections.anycast.edge.plugins.module_utils._bgp import (
    NotRendered, Speaker, mask_passwords, parse_config, speaker_input)
from ansible_collections.anycast.edge.plugins.module_utils._bird import BirdControl, BirdError, BirdUnavailable
from ansible_collections.anycast.edge.plugins.module_utils._engine import GATHERED, Domain, Plan
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._validate import parse_prefix

CANDIDATE = '"$candidate"'     # how the commands name the temporary copy (mktemp's name)


class BirdState(object):
    """The live file's TEXT (None: no file), the prefixes the kernel SERVES (None: not read), BIRD's
    SESSIONS ({name: session}; None: BIRD is not running or was not asked)."""

    def __init__(self, text, served=None, sessions=None):
        self.text = text
        self.served = served
        self.sessions = sessions

    @property
    def running(self):
        return self.sessions is not None


class BirdPlan(Plan):
    """The new TEXT (None: nothing to do), as the shell commands that do what apply() does."""

    def __init__(self, params, text, configure):
        self.text = text
        commands = []
        if text is not None:
            path = params['config_file']
            quoted = shlex.quote(path)
            commands = [
                'candidate=$(mktemp %s)' % shlex.quote(os.path.join(os.path.dirname(path) or '.',
                                                                    '.%s.XXXXXXXX' % os.path.basename(path))),
                "cat > %s <<'EOF'\n%sEOF" % (CANDIDATE, mask_passwords(text)),
                'chgrp %s %s && chmod 0640 %s' % (shlex.quote(params['config_group']), CANDIDATE, CANDIDATE),
                '%s -p -c %s' % (shlex.quote(params['bird_binary']), CANDIDATE),
                'mv %s %s' % (CANDIDATE, quoted)]
            if configure:
                commands.append(configure_command(params))
        super().__init__(commands)


def configure_command(params):
    return 'birdc -s %s configure' % shlex.quote(params['control_socket'])


def served_by_kernel():
    """What the kernel of this namespace serves: local routes (AnyIP prefixes, addresses) and the
    collection's own routes (tenants' tables)."""
    # Imported here: _netlink imports pyroute2 (75 ms), which the role's runs (served_prefixes given) never need.
    from ansible_collections.anycast.edge.plugins.module_utils._netlink import (  # pylint: disable=import-outside-toplevel
        ROUTE_PROTO, RTN_LOCAL, TABLE_LOCAL, RawRtnl)
    served = []
    with RawRtnl() as raw:
        for family in (4, 6):
            for route in raw.routes(family, None):
                if (route['table'] == TABLE_LOCAL and route['type'] == RTN_LOCAL) or route['proto'] == ROUTE_PROTO:
                    served.append(ipaddress.ip_network('%s/%d' % (route['dst'], route['dst_len'])))
    return served


def session_list(sessions):
    return [{'name': name, 'state': s.get('bgp_state') or s['state'], 'since': s['since'],
             'neighbor': s.get('neighbor_address'), 'info': s['info']} for name, s in sorted((sessions or {}).items())]


class BgpSpeaker(Domain):
    name = 'bgp_speaker'
    persist = False     # BIRD reads its own file at boot

    def validate(self):
        params = self.params
        self.path = params['config_file']
        self.candidate = None
        self.applied = False
        self.served = None
        if params['state'] == GATHERED:     # no input to check: the file is the question
            self.speaker = self.text = None
            return
        self.speaker = Speaker(params)
        self.text = self.speaker.render()
        if params['served_prefixes'] is not None:
            self.served = [parse_prefix(p, 'served_prefixes[%d]' % i) for i, p in enumerate(params['served_prefixes'])]
            self.speaker.check_served(self.served, params['allow_unserved'])
        for family in self.speaker.unreachable_families():
            self.warn('IPv%d prefixes are configured but no neighbour is IPv%d: they are not announced'
                      % (family, family))

    # -- host ---------------------------------------------------------------
    def close(self):
        if self.candidate is not None:
            try:
                os.unlink(self.candidate)
            except FileNotFoundError:
                pass
            self.candidate = None

    def read(self):
        gathering = self.params['state'] == GATHERED
        served = None
        if self.served is None and not gathering:
            served = served_by_kernel()
        return BirdState(self.read_file(), served, None if gathering else self.sessions())

    def read_file(self):
        try:
            with open(self.path) as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EdgeError('config_file: cannot read %s: %s' % (self.path, exc.strerror))

    def sessions(self):
        """{name: session} of BIRD's BGP protocols, or None when BIRD is not running."""
        try:
            with BirdControl(self.params['control_socket']) as bird:
                return dict((p['name'], p) for p in bird.protocols() if p['proto'] == 'BGP')
        except BirdUnavailable:
            return None
        except BirdError as exc:
            raise EdgeError('control_socket: %s' % exc)

    def empty(self):
        # A host with BIRD installed and running on a configuration of its own.
        return BirdState(None, None, {})

    # -- deciding -------------------------------------------------------------
    def plan(self, state):
        if state.served is not None:
            self.speaker.check_served(state.served, self.params['allow_unserved'])
        return BirdPlan(self.params, None if state.text == self.text else self.text, state.running)

    def verify(self, plan):
        """The candidate beside the live file (the same file system: the rename is atomic), checked by
        `bird -p`; apply() moves it in place, close() removes it otherwise."""
        directory = os.path.dirname(self.path) or '.'
        if not os.path.isdir(directory):
            raise EdgeError('config_file: directory %s does not exist (is bird2 installed?)' % directory)
        self.close()
        self.candidate = self.write_candidate(plan.text)
        binary = self.params['bird_binary']
        if not os.access(binary, os.X_OK):
            raise EdgeError('bird_binary: %s is not an executable (install the bird2 package)' % binary)
        proc = subprocess.run([binary, '-p', '-c', self.candidate], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            said = mask_passwords((proc.stderr + proc.stdout).strip()).replace(self.candidate,
                                                                               self.path + ' (candidate)')
            raise EdgeError('BIRD refused the new configuration, the live %s and the running BIRD are unchanged: %s'
                            % (self.path, said))

    def write_candidate(self, text):
        handle, path = tempfile.mkstemp(dir=os.path.dirname(self.path) or '.',
                                        prefix='.%s.' % os.path.basename(self.path))
        with os.fdopen(handle, 'w') as out:
            out.write(text)
        try:
            gid = grp.getgrnam(self.params['config_group']).gr_gid
        except KeyError:
            gid = 0
        os.chown(path, 0, gid)
        os.chmod(path, 0o640)
        return path

    def apply(self, plan):
        """The candidate replaces the live file; BIRD reconfigures. If BIRD refuses, the previous file is
        put back (BIRD keeps running on what it had)."""
        previous = self.read_file()
        os.replace(self.candidate, self.path)
        self.candidate = None
        try:
            with BirdControl(self.params['control_socket']) as bird:
                bird.configure()
            self.applied = True
        except BirdUnavailable:
            # not running: it reads the file when it starts; nothing was sent to it
            command = configure_command(self.params)
            if command in plan.commands:
                plan.commands.remove(command)
        except BirdError as exc:
            if previous is None:
                os.unlink(self.path)
            else:
                os.replace(self.write_candidate(previous), self.path)
            raise EdgeError('BIRD did not take the new configuration; the previous %s is back in place: %s'
                            % (self.path, exc))

    def problems(self, state, plan):
        return ['%s is not the configuration written' % self.path]

    # -- reporting --------------------------------------------------------------
    def gather(self, state):
        """The input that writes the live file as it is; {} when there is none, or it is not bgp_speaker's.

        Passwords are given as the file has them (the input must rewrite it exactly); outside
        state=gathered (before, after) they are masked, as in the diff.
        """
        gathering = self.params['state'] == GATHERED
        if state.text is None:
            return {}
        if state.text == self.text:
            found = speaker_input(self.speaker)
        else:
            try:
                found = parse_config(state.text)
            except NotRendered as exc:
                if gathering:
                    self.warn('config_file %s is not a configuration bgp_speaker wrote, nothing gathered: %s'
                              % (self.path, exc))
                return {}
        return found if gathering else mask_input(found)

    def expected(self, state, plan):
        return mask_input(speaker_input(self.speaker))

    def diff(self, state, plan):
        return {'before': mask_passwords(state.text or ''), 'after': mask_passwords(self.text),
                'before_header': self.path, 'after_header': self.path}

    def result(self, state, plan, after):
        sessions = (after or state).sessions
        # only a session that was up can have been reset by this run; one still coming up moves on its own
        was_up = {name for name, s in (state.sessions or {}).items() if s.get('bgp_state') == 'Established'}
        restarted = sorted(name for name, s in (sessions or {}).items()
                           if after is not None and name in was_up and state.sessions[name]['since'] != s['since'])
        return {'config_file': self.path, 'applied': self.applied, 'restarted': restarted,
                'sessions': session_list(sessions), 'prefixes': [str(p.network) for p in self.speaker.prefixes]}


def mask_input(found):
    """FOUND with the neighbours' passwords masked (as in the diff)."""
    if not any('password' in nb for nb in found.get('neighbors', [])):
        return found
    return dict(found, neighbors=[dict(nb, password='********') if 'password' in nb else nb
                                  for nb in found['neighbors']])
