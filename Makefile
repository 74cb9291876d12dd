# `make demo` and `make test` work on a fresh Debian machine with Python 3.11: they create the
# virtual environment, install system and Python packages, build the Cython kernel, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# libgomp threads spin after a parallel loop unless told to sleep (see STACK-NOTES.md).
export OMP_WAIT_POLICY ?= passive

KERNEL_SOURCES := $(shell find twinbench -name '*.pyx' -o -name '*.pxd')

.PHONY: demo test bench setup system clean

demo: setup
	$(BIN)/twinbench demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/twinbench bench kernel

setup: .stamp-install

# System packages: a C compiler, Python headers and venv support to build; mosquitto (the MQTT
# broker the tests and the plant run on loopback) and its C clients (the MQTT benchmark's
# publisher); Chromium for the browser tests of the Voila apps (Playwright drives Debian's
# /usr/bin/chromium: `playwright install` cannot download browsers here). Installed with apt-get
# only when missing.
.stamp-system:
	@missing=""; \
	command -v gcc >/dev/null || missing="$$missing gcc g++ make"; \
	$(PYTHON) -c 'import venv, ensurepip, sysconfig, os; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null || missing="$$missing python3-dev python3-venv"; \
	command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || missing="$$missing mosquitto"; \
	command -v mosquitto_pub >/dev/null || missing="$$missing mosquitto-clients"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing with apt-get:$$missing"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
	touch $@

# A marker file, not $(BIN)/python: that is a symlink whose date is the system interpreter's.
$(VENV)/.created: | .stamp-system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	touch $@

# Editable install: the extension modules are compiled in place. Reinstalled when a .pyx/.pxd,
# setup.py or pyproject.toml changes, because editable installs do not rebuild on their own.
.stamp-install: $(VENV)/.created pyproject.toml setup.py $(KERNEL_SOURCES)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf build .stamp-* $(VENV) *.egg-info
	find twinbench \( -name '*.so' -o -name '*.c' \) -delete
