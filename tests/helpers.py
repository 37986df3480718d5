"""Test support: namespaces, running modules and playbooks for real.

Everything here runs as root on the test machine but only ever changes network
namespaces the tests create (never the root namespace).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, 'build', 'collections')
PYTHON = sys.executable
VENV_BIN = os.path.dirname(PYTHON)


def ensure_collection_link():
    """build/collections/ansible_collections/anycast/edge -> the repo root."""
    parent = os.path.join(COLLECTIONS, 'ansible_collections', 'anycast')
    link = os.path.join(parent, 'edge')
    os.makedirs(parent, exist_ok=True)
    if not os.path.islink(link):
        os.symlink(REPO, link)
    return COLLECTIONS


def sh(cmd, check=True, input=None, timeout=60):
    """Run a command (list or shell string); return CompletedProcess with text output."""
    proc = subprocess.run(cmd, shell=isinstance(cmd, str), input=input, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError('%s failed (%d):\n%s%s' % (cmd, proc.returncode, proc.stdout, proc.stderr))
    return proc


def nsexec(ns, cmd, check=True, input=None, timeout=60):
    if isinstance(cmd, str):
        return sh('ip netns exec %s %s' % (ns, cmd), check=check, input=input, timeout=timeout)
    return sh(['ip', 'netns', 'exec', ns] + list(cmd), check=check, input=input, timeout=timeout)


def netns_list():
    return sh(['ip', 'netns', 'list']).stdout.split()


_SCRATCH_ROOT = []


def scratch_dir(prefix):
    """A new temporary directory, removed with all the others when the test process exits,
    whether the tests passed or not.

    They share one root (mode 0755, so that a proxy that dropped root can read its files).
    """
    if not _SCRATCH_ROOT:
        root = tempfile.mkdtemp(prefix='ae-tests-')
        os.chmod(root, 0o755)
        atexit.register(shutil.rmtree, root, True)
        _SCRATCH_ROOT.append(root)
    return tempfile.mkdtemp(prefix=prefix, dir=_SCRATCH_ROOT[0])


def ns_prefix(base):
    """A test module's namespace prefix. AE_NS_TAG (a few letters) keeps two
    checkouts testing on one machine at once out of each other's namespaces."""
    return os.environ.get('AE_NS_TAG', '') + base


def unique_name(prefix):
    return '%s%s' % (prefix, uuid.uuid4().hex[:6])


# The lockout guards (hashlimit's ssh_guard, anyip_route's lockout_guard) read these; a test
# runner that is itself under SSH must not hand its own session to the module under test.
SSH_VARIABLES = ('SSH_CONNECTION', 'SSH_CLIENT')


def module_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in SSH_VARIABLES}
    env['PYTHONPATH'] = ensure_collection_link()
    env.update(extra or {})
    return env


def persisted_modules():
    """Modules in the `persisted` action group (they take state_dir)."""
    import yaml  # pylint: disable=import-outside-toplevel
    with open(os.path.join(REPO, 'meta', 'runtime.yml')) as handle:
        runtime = yaml.safe_load(handle)
    return runtime.get('action_groups', {}).get('persisted', [])


def run_module(name, args, check=False, diff=False, env=None, state_dir=None):
    """Run plugins/modules/NAME.py in a fresh process, as Ansible would; return its JSON result.

    Modules that persist get a throwaway state_dir unless one is given: tests
    never write records into the machine's /etc.
    """
    payload = dict(args)
    if name in persisted_modules():
        payload.setdefault('state_dir', state_dir or scratch_dir('state-'))
    payload['_ansible_check_mode'] = check
    payload['_ansible_diff'] = diff
    payload['_ansible_tmpdir'] = tempfile.gettempdir()
    proc = subprocess.run([PYTHON, os.path.join(REPO, 'plugins', 'modules', name + '.py')],
                          input=json.dumps({'ANSIBLE_MODULE_ARGS': payload}), capture_output=True,
                          text=True, env=module_env(env), timeout=300, check=False)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('module %s printed no JSON (rc %d):\n%s\n%s'
                             % (name, proc.returncode, proc.stdout, proc.stderr))
    # ansible-core 2.19 modules report warnings as structured events; Ansible
    # shows their text, and so do we
    result['warnings'] = [w['event']['msg'] if isinstance(w, dict) else w for w in result.get('warnings', [])]
    return result


def run_playbook(tasks, check=False, diff=False, env=None, extra_vars=None, timeout=600, state_dir=None):
    """Run TASKS (a list of task dicts) with ansible-playbook on localhost.

    Each task's registered result is returned, in order; a failed task does not
    stop the play (its result has failed=True), so tests can assert on errors.
    Persisting modules write their records to STATE_DIR (default: a fresh
    temporary directory), never to the machine's /etc.
    """
    ensure_collection_link()
    workdir = scratch_dir('play-')
    out = os.path.join(workdir, 'results.json')
    play_tasks = []
    for index, task in enumerate(tasks):
        task = dict(task)
        task.setdefault('name', 'task %d' % index)
        task['register'] = 'ae_r%d' % index
        task['ignore_errors'] = True
        play_tasks.append(task)
    collect = '[%s]' % ', '.join('ae_r%d' % i for i in range(len(tasks)))
    play_tasks.append({
        'name': 'collect results',
        'ansible.builtin.copy': {'content': '{{ %s | to_json }}' % collect, 'dest': out, 'mode': '0600'},
        'check_mode': False,
        'diff': False,
    })
    playbook = [{'hosts': 'localhost', 'gather_facts': False, 'tasks': play_tasks,
                 'module_defaults': {'group/anycast.edge.persisted': {
                     'state_dir': state_dir or scratch_dir('state-')}}}]
    path = os.path.join(workdir, 'play.yml')
    with open(path, 'w') as handle:
        json.dump(playbook, handle)  # JSON is YAML
    cmd = [os.path.join(VENV_BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', path,
           '-e', 'ansible_python_interpreter=%s' % PYTHON]
    for key, value in (extra_vars or {}).items():
        cmd += ['-e', '%s=%s' % (key, json.dumps(value))]
    if check:
        cmd.append('--check')
    if diff:
        cmd.append('--diff')
    run_env = {k: v for k, v in os.environ.items() if k not in SSH_VARIABLES}
    run_env.update({
        'ANSIBLE_COLLECTIONS_PATH': COLLECTIONS,
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_HOST_KEY_CHECKING': 'False',
        'ANSIBLE_LOCAL_TEMP': os.path.join(workdir, 'tmp'),
        'ANSIBLE_RETRY_FILES_ENABLED': 'False',
    })
    run_env.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=timeout, check=False)
    if not os.path.exists(out):
        raise AssertionError('ansible-playbook did not finish (rc %d):\n%s\n%s'
                             % (proc.returncode, proc.stdout[-5000:], proc.stderr[-5000:]))
    with open(out) as handle:
        results = json.load(handle)
    for result in results:
        result.setdefault('_stdout', proc.stdout)
    return results


def ok(result):
    """Assert a module result did not fail; return it."""
    assert not result.get('failed'), result.get('msg', result)
    return result


def route_dump(ns):
    """Kernel routing state of a namespace (all tables, both families), as text."""
    v4 = nsexec(ns, ['ip', '-4', 'route', 'show', 'table', 'all']).stdout
    v6 = nsexec(ns, ['ip', '-6', 'route', 'show', 'table', 'all']).stdout
    rules = nsexec(ns, ['ip', 'rule', 'show']).stdout + nsexec(ns, ['ip', '-6', 'rule', 'show']).stdout
    return v4 + v6 + rules


def _strip_save(text):
    """iptables-save output without its comments and packet counters (traffic moves them)."""
    return '\n'.join(re.sub(r'\[\d+:\d+\]', '[0:0]', line) for line in text.splitlines()
                     if not line.startswith('#'))


def xtables_dump(ns):
    """Every xtables table of both variants and the nft ruleset of a namespace."""
    parts = []
    for tool in ('iptables-save', 'ip6tables-save', 'iptables-legacy-save', 'ip6tables-legacy-save'):
        parts.append(_strip_save(nsexec(ns, [tool], check=False).stdout))
    parts.append(nsexec(ns, ['nft', '--stateless', 'list', 'ruleset']).stdout)
    return '\n'.join(parts)


def kernel_state(ns):
    return route_dump(ns) + xtables_dump(ns)


def legacy_host_path():
    """A PATH under which `iptables` is the legacy variant: stands in for a legacy host.

    The binaries are the real xtables-legacy-multi, so `iptables -V` says legacy
    and the CLI writes the legacy tables, exactly as on such a host.
    """
    bindir = os.path.join(REPO, 'build', 'legacy-bin')
    os.makedirs(bindir, exist_ok=True)
    multi = sh('command -v xtables-legacy-multi').stdout.strip()
    for name in ('iptables', 'iptables-save', 'iptables-restore',
                 'ip6tables', 'ip6tables-save', 'ip6tables-restore'):
        link = os.path.join(bindir, name)
        if not os.path.islink(link):
            os.symlink(multi, link)
    return bindir + os.pathsep + os.environ.get('PATH', '')


class NamespaceFactory(object):
    """Creates namespaces named PREFIX + random suffix; deletes all of them at teardown."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.created = []

    def __call__(self, loopback_up=True, forwarding=True):
        name = unique_name(self.prefix)
        sh(['ip', 'netns', 'add', name])
        self.created.append(name)
        if loopback_up:
            nsexec(name, ['ip', 'link', 'set', 'lo', 'up'])
        # New namespaces may inherit ip_forward; say what we want.
        nsexec(name, ['sysctl', '-qw', 'net.ipv4.ip_forward=%d' % int(forwarding),
                      'net.ipv6.conf.all.forwarding=%d' % int(forwarding),
                      'net.ipv4.icmp_ratelimit=0'])
        return name

    def track(self, name):
        """Also delete a namespace the code under test created."""
        self.created.append(name)
        return name

    def cleanup(self):
        for name in reversed(self.created):
            # kill anything still running inside before deleting
            sh('ip netns pids %s 2>/dev/null | xargs -r kill -9' % name, check=False)
            sh(['ip', 'netns', 'del', name], check=False)


def link_pair(host_ns, peer_ns, host_if, peer_if, host_addrs, peer_addrs):
    """A veth pair between two namespaces, with addresses, both ends up."""
    nsexec(host_ns, ['ip', 'link', 'add', host_if, 'type', 'veth', 'peer', 'name', peer_if,
                     'netns', peer_ns])
    for ns, ifname, addrs, link_local in ((host_ns, host_if, host_addrs, 'fe80::1/64'),
                                          (peer_ns, peer_if, peer_addrs, 'fe80::2/64')):
        # IPv6 link-local addresses set by hand rather than autoconfigured: they
        # exist at once (no race with before/after dumps of kernel state), and
        # neighbour discovery for forwarded and replied packets needs them
        nsexec(ns, ['ip', 'link', 'set', ifname, 'addrgenmode', 'none'])
        addrs = list(addrs) + [link_local]
        for addr in addrs:
            nsexec(ns, ['ip', 'addr', 'add', addr, 'dev', ifname, 'nodad'])
        nsexec(ns, ['ip', 'link', 'set', ifname, 'up'])
