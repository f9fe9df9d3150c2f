# subdomaind: `make demo` shows the whole flow against local real servers; `make test` runs the suite.
# Both install what they need (Debian packages and a venv in .venv/) and are safe to run again.

VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed-stamp
APT_PACKAGES := dovecot-imapd dovecot-lmtpd bind9 bind9-utils bind9-dnsutils postgresql \
                tesseract-ocr tesseract-ocr-ind poppler-utils python3-venv ca-certificates \
                chromium libpython3.11-testsuite systemd fonts-dejavu-core softhsm2 libnss3-tools zbar-tools \
                dovecot-submissiond postfix opendkim opendkim-tools
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all deps apt venv test test-fast lint typecheck demo corpora bench soak clean

all: test

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-upgrade $$missing; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

deps: apt venv

# Most server tests wait on a daemon or a mailbox, not the CPU: three workers (pytest-xdist) keep both
# cores busy. Each worker starts its own servers on free ports. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 3

test: deps corpora
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)
	$(MAKE) --no-print-directory lint

# The tests that need no server (every test using a server fixture is marked `servers` by conftest.py).
# Several wait on a child process (Chromium, a parser worker): three workers, idle ones stealing work.
test-fast: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not servers and not slow and not system" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check daemon parsers workflows tests bench examples
	@# mypy reads the package by its installed name: a tree of links maps subdomaind.X to the folder X.
	@mkdir -p .cache/typecheck/subdomaind && for d in daemon parsers workflows templates; do \
	  ln -sfn ../../../$$d .cache/typecheck/subdomaind/$$d; done
	MYPYPATH=.cache/typecheck $(VENV)/bin/mypy --namespace-packages -p subdomaind

demo: deps
	$(PY) examples/demo.py

corpora: deps
	bash tests/fetch_corpora.sh

# Each bench prints one summary line (figure and target) and exits non-zero on a miss; run them all.
bench: deps
	@rc=0; for b in parse.py backlog.py latency.py idle.py "backlog.py --memory" scaleout.py letters.py "agencies.py --agencies 15 150"; do \
	  $(PY) bench/$$b || rc=1; \
	done; exit $$rc

soak: deps
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf /tmp/subdomaind-demo-$$(id -u) .pytest_cache .mypy_cache .ruff_cache
