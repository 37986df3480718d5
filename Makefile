# anycast.edge — one entry point for developers and CI.
#   make test       everything CI runs (installs what it needs first)
#   make lab        the podman lab (see README)
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
REPORTS := build/reports
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/build/collections
export ANSIBLE_NOCOLOR := 1

.PHONY: test deps unit integration vm sanity lint molecule build docs-check lab lab-down clean

# Every suite, even after one failed, then one line per suite with its counts; fails when a
# suite failed or, with CI=true, lacked a prerequisite (scripts/run_suites.py).
test: deps
	@python3 scripts/run_suites.py

deps:
	bash scripts/install-deps.sh
	@mkdir -p build/collections/ansible_collections/anycast
	@ln -sfn $(CURDIR) build/collections/ansible_collections/anycast/edge

unit: deps
	$(PYTEST) -q tests/unit --junitxml=$(REPORTS)/unit.xml

integration: deps
	$(PYTEST) -q tests/integration --junitxml=$(REPORTS)/integration.xml

vm: deps
	$(PYTEST) -q -m vm tests/vm --junitxml=$(REPORTS)/vm.xml

sanity: deps
	bash scripts/sanity.sh

lint: deps
	$(VENV)/bin/ansible-lint --offline --profile production

# Each scenario runs Debian 11, 12 and 13 in parallel (one container each).
molecule: deps
	bash scripts/molecule-test.sh default
	bash scripts/molecule-test.sh networkd

# The collection tarball must build, install, and document every module.
build: deps
	rm -rf build/galaxy && mkdir -p build/galaxy/installed
	$(VENV)/bin/ansible-galaxy collection build --force --output-path build/galaxy .
	$(VENV)/bin/ansible-galaxy collection install --force -p build/galaxy/installed build/galaxy/anycast-edge-*.tar.gz
	rc=0; for m in $$(ls plugins/modules/*.py | xargs -n1 basename | sed 's/\.py$$//'); do \
	  if ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/galaxy/installed $(VENV)/bin/ansible-doc anycast.edge.$$m >/dev/null; \
	  then echo "ansible-doc anycast.edge.$$m: ok"; else echo "ansible-doc anycast.edge.$$m: FAILED"; rc=1; fi; \
	done; exit $$rc

lab: deps
	bash scripts/lab.sh up

lab-down:
	bash scripts/lab.sh down

clean:
	rm -rf build tests/output
