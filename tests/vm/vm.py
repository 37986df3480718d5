"""A throw-away QEMU VM with a GRE-capable kernel, for tests this host's kernel cannot run.

The image (Debian bookworm, linux-image-cloud-amd64, debootstrap) is built once by
``build-image.sh`` and cached under ``~/.cache/anycast-edge/vm/<hash of the build
script>``; every boot runs on a copy-on-write snapshot of it, so the cached image
never changes. QEMU runs under software emulation (TCG): this host's KVM cannot
boot a stock kernel.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
BUILD_SCRIPT = HERE / 'build-image.sh'
CACHE_ROOT = Path(os.environ.get('ANYCAST_EDGE_VM_CACHE',
                                 Path.home() / '.cache' / 'anycast-edge' / 'vm'))
QEMU = 'qemu-system-x86_64'
VENV_BIN = REPO_ROOT / '.venv' / 'bin'

SSH_OPTIONS = [
    '-o', 'BatchMode=yes',
    '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'LogLevel=ERROR',
    '-o', 'ConnectTimeout=10',
]


def unavailable_reason():
    """Why this machine cannot build or boot the VM at all, or None.

    Only a genuinely missing capability is a reason; a failing build or boot is
    a test failure, not a skip.
    """
    for tool in (QEMU, 'debootstrap', 'mkfs.ext4', 'ssh', 'ssh-keygen'):
        if shutil.which(tool) is None:
            return '%s is not installed (apt install qemu-system-x86 debootstrap e2fsprogs openssh-client)' % tool
    if os.geteuid() != 0:
        return 'building the VM image with debootstrap needs root'
    return None


def require_vm():
    """Called by a test that boots the VM: a skip, or under CI=true a failure, when it cannot."""
    reason = unavailable_reason()
    if reason:
        from prerequisites import missing_prerequisite  # pylint: disable=import-outside-toplevel
        missing_prerequisite('QEMU VM tests cannot run on this machine: %s' % reason)


def image_dir():
    digest = hashlib.sha256(BUILD_SCRIPT.read_bytes()).hexdigest()[:16]
    return CACHE_ROOT / digest


def ensure_image(log=sys.stderr):
    """Build the image unless a complete one for this build script is cached."""
    out = image_dir()
    if (out / 'complete').exists():
        return out
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / '.build.lock', 'w') as lock:
        # Two test runs at once build the image only once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / 'complete').exists():
            started = time.monotonic()
            print('building the GRE test VM image in %s (once; a few minutes)' % out, file=log)
            result = subprocess.run(['bash', str(BUILD_SCRIPT), str(out)], check=False,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if result.returncode != 0:
                raise RuntimeError('building the VM image failed (rc=%d):\n%s'
                                   % (result.returncode, result.stdout[-4000:]))
            print('VM image built in %.0f s' % (time.monotonic() - started), file=log)
            # Images of older build scripts are never booted again.
            for stale in CACHE_ROOT.iterdir():
                if stale.is_dir() and stale != out and len(stale.name) == 16:
                    shutil.rmtree(stale, ignore_errors=True)
    return out


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class VM:
    """One booted VM; use as a context manager so QEMU is always stopped."""

    def __init__(self, image, memory_mb=1024, name='aeg-vm', allow_reboot=False):
        self.image = Path(image)
        self.allow_reboot = allow_reboot  # a guest reboot restarts it (same snapshot) instead of ending QEMU
        self.memory_mb = memory_mb
        self.name = name
        self.port = None
        self.proc = None
        self.workdir = Path(tempfile.mkdtemp(prefix='aeg-vm-'))
        self.console_log = self.workdir / 'console.log'
        self.key = self.workdir / 'id_ed25519'
        self.control_path = self.workdir / 'ssh-control'
        self.boot_seconds = None

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout=300):
        # ssh refuses a private key readable by others; the cached copy is
        # shared, so each VM gets its own 0600 copy.
        shutil.copyfile(self.image / 'id_ed25519', self.key)
        os.chmod(self.key, 0o600)
        self.port = free_port()
        cmd = [
            QEMU, '-name', self.name, '-accel', 'tcg,tb-size=512', '-cpu', 'max', '-m', str(self.memory_mb), '-smp', '1',
            '-nodefaults', '-display', 'none', '-monitor', 'none',
            '-serial', 'file:%s' % self.console_log,
            '-kernel', str(self.image / 'vmlinuz'), '-initrd', str(self.image / 'initrd.img'),
            '-append', 'root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 quiet',
            '-drive', 'file=%s,format=raw,if=virtio,snapshot=on' % (self.image / 'rootfs.img'),
            '-netdev', 'user,id=uplink,hostfwd=tcp:127.0.0.1:%d-:22' % self.port,
            '-device', 'virtio-net-pci,netdev=uplink',
        ]
        if not self.allow_reboot:
            cmd.append('-no-reboot')
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / 'qemu.stderr', 'w'),
                                     start_new_session=True)
        self.wait_for_ssh(started + timeout)
        self.boot_seconds = time.monotonic() - started
        return self

    def wait_for_ssh(self, deadline):
        """Poll until the guest answers on SSH (after a boot or a reboot)."""
        timeout = deadline - time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError('QEMU exited with %s before SSH came up:\n%s\n%s'
                                   % (self.proc.returncode,
                                      (self.workdir / 'qemu.stderr').read_text()[-2000:],
                                      self.console_tail()))
            probe = subprocess.run(self.ssh_command('true'), check=False, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=60)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError('the VM did not answer on SSH within %d s; console:\n%s'
                                   % (timeout, self.console_tail()))
            time.sleep(2)

    def stop(self):
        if self.port is not None:
            subprocess.run(['ssh', '-o', 'ControlPath=%s' % self.control_path, '-O', 'exit', '-p', str(self.port),
                            'root@127.0.0.1'], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def console_tail(self, chars=3000):
        try:
            return self.console_log.read_text(errors='replace')[-chars:]
        except OSError:
            return '(no console output)'

    # -- commands ------------------------------------------------------------
    def ssh_command(self, command):
        # One shared connection: a key exchange costs seconds under emulation.
        return ['ssh', *SSH_OPTIONS, '-o', 'ControlMaster=auto', '-o', 'ControlPath=%s' % self.control_path,
                '-o', 'ControlPersist=600', '-i', str(self.key), '-p', str(self.port),
                'root@127.0.0.1', command]

    def run(self, command, check=True, timeout=120, input=None):
        """Run a shell command in the VM; returns CompletedProcess (text)."""
        result = subprocess.run(self.ssh_command(command), check=False, input=input, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError('in the VM: %s\nrc=%d\nstdout:\n%s\nstderr:\n%s'
                                 % (command, result.returncode, result.stdout, result.stderr))
        return result

    def script(self, text, check=True, timeout=120):
        """Run a multi-line bash script (set -e) in the VM."""
        return self.run('bash -euxo pipefail -s', check=check, timeout=timeout, input=text)

    def popen(self, command):
        """Start a long-running command in the VM (e.g. tcpdump); caller ends it."""
        return subprocess.Popen(self.ssh_command(command), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    # -- ansible -------------------------------------------------------------
    @contextlib.contextmanager
    def ansible_workdir(self, prefix):
        """A scratch directory for playbooks run against this VM (``base``, with ``inventory_path``
        in it), removed afterwards."""
        self.base = tempfile.mkdtemp(prefix=prefix)
        try:
            self.inventory_path = self.inventory(os.path.join(self.base, 'inventory.ini'))
            yield self
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def inventory(self, path, group='edge'):
        Path(path).write_text(
            '[%s]\nvm ansible_host=127.0.0.1 ansible_port=%d ansible_user=root '
            'ansible_ssh_private_key_file=%s ansible_python_interpreter=/usr/bin/python3\n'
            % (group, self.port, self.key))
        return path


def collections_dir(base):
    """A directory where ``ansible_collections/anycast/edge`` is this repository."""
    target = Path(base) / 'ansible_collections' / 'anycast'
    target.mkdir(parents=True, exist_ok=True)
    link = target / 'edge'
    if not link.exists():
        link.symlink_to(REPO_ROOT)
    return Path(base)


def ansible_env(base):
    env = dict(os.environ)
    env.update({
        'ANSIBLE_COLLECTIONS_PATH': str(collections_dir(base)),
        'ANSIBLE_HOST_KEY_CHECKING': 'False',
        'ANSIBLE_PIPELINING': 'True',
        'ANSIBLE_SSH_ARGS': '-o ControlMaster=auto -o ControlPersist=120s '
                            '-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null',
        'ANSIBLE_CONTROL_PATH_DIR': str(Path(base) / 'cp'),
        'ANSIBLE_RETRY_FILES_ENABLED': 'False',
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_FORCE_COLOR': '0',
        'ANSIBLE_STDOUT_CALLBACK': 'ansible.builtin.json',
        'ANSIBLE_LOCAL_TEMP': str(Path(base) / 'tmp'),
        'PATH': '%s:%s' % (VENV_BIN, env.get('PATH', '')),
    })
    return env


def ansible_playbook_binary():
    candidate = VENV_BIN / 'ansible-playbook'
    return str(candidate) if candidate.exists() else 'ansible-playbook'


def shell_quote(*words):
    return ' '.join(shlex.quote(str(w)) for w in words)


def vm_playbook(machine, tasks, check=False, diff=False, timeout=600, roles=False):
    """Run TASKS with ansible-playbook against the VM; return each task's result.

    A failed task does not stop the play (ignore_errors), so tests can assert on
    failures; results come from the json stdout callback.
    """
    play_tasks = []
    for index, task in enumerate(tasks):
        task = dict(task)
        task.setdefault('name', 'task %d' % index)
        task['ignore_errors'] = True
        play_tasks.append(task)
    playbook = [{'hosts': 'edge', 'gather_facts': False, 'tasks': play_tasks}]
    path = os.path.join(machine.base, 'play.yml')
    with open(path, 'w') as handle:
        json.dump(playbook, handle)  # JSON is YAML
    cmd = [ansible_playbook_binary(), '-i', machine.inventory_path, path]
    if check:
        cmd.append('--check')
    if diff:
        cmd.append('--diff')
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=ansible_env(machine.base),
                          timeout=timeout)
    try:
        report = json.loads(proc.stdout)
        play = report['plays'][0]
        results = [task['hosts']['vm'] for task in play['tasks']]
    except (ValueError, KeyError, IndexError):
        raise AssertionError('ansible-playbook gave no usable JSON (rc %d):\n%s\n%s'
                             % (proc.returncode, proc.stdout[-5000:], proc.stderr[-5000:]))
    if len(results) != len(tasks) and not roles:  # an included role reports each of its tasks
        raise AssertionError('expected %d task results, got %d:\n%s' % (len(tasks), len(results), proc.stdout[-5000:]))
    return results
