# The two commands: `make run` and `make test`. Both set up whatever this machine lacks.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PACKAGES := chromium xmlsec1 slapd ldap-utils rsyslog rsyslog-gnutls wrk
DEB_STAMP := $(VENV)/.debs
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq

.PHONY: run test lint bench clean setup

run: $(STAMP)
	$(VENV)/bin/trellis db upgrade
	$(VENV)/bin/trellis demo seed
	$(VENV)/bin/trellis serve --host 127.0.0.1 --port 5000

NODE_PEERS := tests/peers/oidc/node_modules/.installed

test: $(STAMP) $(DEB_STAMP) $(NODE_PEERS)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/login.py --quick

setup: $(STAMP) $(DEB_STAMP) $(NODE_PEERS)

# Re-installs only when the package definition changes.
$(STAMP): pyproject.toml
	@python3 -c "import ensurepip, venv" 2>/dev/null || { $(APT) python3-venv; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Debian packages the test suite drives (a real browser; xmlsec1 for SAML peers; OpenLDAP's
# slapd, preseeded to create no directory or service of its own: the tests start their own).
$(DEB_STAMP): Makefile
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo "slapd slapd/no_configuration boolean true" | $(SUDO) debconf-set-selections; \
	  $(APT) $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

# Test peers from npm (a real OpenID Provider, a real relying party), pinned by lockfiles.
$(NODE_PEERS): tests/peers/oidc/package-lock.json tests/peers/rp/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { $(APT) nodejs npm; }
	cd tests/peers/oidc && npm ci --no-audit --no-fund --loglevel=error
	cd tests/peers/rp && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) instance test-output tests/peers/oidc/node_modules tests/peers/rp/node_modules
