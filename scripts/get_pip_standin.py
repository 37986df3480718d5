"""Offline stand-in for the get-pip.py that ansible-test downloads.

ansible-test bootstraps pip in each sanity venv with a script it fetches from
a host this machine cannot reach; it first looks in its cache, where
scripts/sanity.sh puts this file. It bootstraps pip from the interpreter's
own ensurepip and then installs what it was asked for, with this machine's
pip configuration (package mirror, CA bundle).
"""

import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
# ensurepip leaves PIP_CONFIG_FILE=/dev/null behind, which would hide the
# machine's pip configuration from the install below.
os.environ.pop('PIP_CONFIG_FILE', None)
args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install'] + args))
