# anycast.edge — one entry point for developers and CI.
#   make test       everything CI runs (installs what it needs first)
#   make lab        the podman lab (see README)
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/build/collections
export ANSIBLE_NOCOLOR := 1

.PHONY: test deps unit integration vm sanity lint molecule build docs-check lab lab-down clean

test: deps unit integration sanity lint build molecule vm
	@echo "make test: all suites passed"

deps:
	bash scripts/install-deps.sh
	@mkdir -p build/collections/ansible_collections/anycast
	@ln -sfn $(CURDIR) build/collections/ansible_collections/anycast/edge

unit: deps
	$(PYTEST) -q tests/unit

integration: deps
	$(PYTEST) -q tests/integration

vm: deps
	$(PYTEST) -q -m vm tests/vm

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
	for m in $$(ls plugins/modules/*.py | xargs -n1 basename | sed 's/\.py$$//'); do \
	  ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/galaxy/installed $(VENV)/bin/ansible-doc anycast.edge.$$m >/dev/null || exit 1; \
	  echo "ansible-doc anycast.edge.$$m: ok"; \
	done

lab: deps
	bash scripts/lab.sh up

lab-down:
	bash scripts/lab.sh down

clean:
	rm -rf build tests/output
