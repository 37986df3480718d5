#!/usr/bin/env bash
# ansible-test sanity on a copy of the collection at .../ansible_collections/anycast/edge
# (ansible-test insists on that path), offline-capable (see scripts/get_pip_standin.py).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv
pip_version=$("$venv/bin/python" -c "
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
print(get_venv_packages(NativePythonConfig(version='3.11', path='/usr/bin/python3'))['pip'])")
mkdir -p ~/.ansible/test/cache
cp scripts/get_pip_standin.py ~/.ansible/test/cache/"get_pip_${pip_version//./_}.py"

dest=$root/build/sanity/ansible_collections/anycast/edge
rm -rf "$dest"; mkdir -p "$dest"
git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ "$dest/"
cd "$dest"
git init -q . && git add -A && git -c user.email=ci@invalid -c user.name=ci commit -qm sanity
# --junit: one result file per sanity test (skips included), which `make test` counts.
set +e
"$venv/bin/ansible-test" sanity --requirements --venv --python 3.11 --color no --junit "$@"
rc=$?
set -e
rm -rf "$root/build/reports/sanity" && mkdir -p "$root/build/reports"
if [ -d tests/output/junit ]; then cp -r tests/output/junit "$root/build/reports/sanity"; fi
exit "$rc"
