# `make demo` and `make test` work on a fresh Debian machine with Python 3.11: they create the
# virtual environment, install system and Python packages, build the Cython kernel, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# libgomp threads spin after a parallel loop unless told to sleep (see STACK-NOTES.md).
export OMP_WAIT_POLICY ?= passive

KERNEL_SOURCES := $(shell find twinbench -name '*.pyx' -o -name '*.pxd')
# The JupyterLab extension (TypeScript), built with jlpm (JupyterLab's yarn) into
# twinbench/labextension, which the package ships.
LABEXT_DIR     := extensions/jupyterlab-twinbench
LABEXT_SOURCES := $(LABEXT_DIR)/package.json $(LABEXT_DIR)/yarn.lock $(LABEXT_DIR)/tsconfig.json \
                  $(shell find $(LABEXT_DIR)/src $(LABEXT_DIR)/style -type f)
LABEXT_PREFIX  := $(VENV)/share/jupyter/labextensions/jupyterlab-twinbench
# The Voila template for twinbench apps (`voila --template=twinbench`): sources, installed as they are.
VOILA_TEMPLATE_DIR     := share/jupyter/voila/templates/twinbench
VOILA_TEMPLATE_SOURCES := $(shell find $(VOILA_TEMPLATE_DIR) -type f)
VOILA_TEMPLATE_PREFIX  := $(VENV)/share/jupyter/voila/templates/twinbench

.PHONY: demo test bench setup system clean

demo: setup
	$(BIN)/twinbench demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/twinbench bench kernel

setup: .stamp-install .stamp-labextension .stamp-voila-template

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

# The JupyterLab extension: built when its sources change (Node from apt-get when missing; jlpm
# comes with jupyterlab, in the test extra, hence after the install), then copied where JupyterLab
# looks for extensions: an editable install leaves out the package's data_files, a wheel has them.
# A copy, not a symlink: a wheel installed later into the venv must not write through a link onto
# the built files.
.stamp-labextension: $(LABEXT_SOURCES) | .stamp-install
	@command -v node >/dev/null || { echo "installing with apt-get: nodejs"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs; }
	cd $(LABEXT_DIR) && PATH="$(CURDIR)/$(BIN):$$PATH" jlpm install --immutable \
	  && PATH="$(CURDIR)/$(BIN):$$PATH" jlpm build:prod
	rm -rf $(LABEXT_PREFIX) && mkdir -p $(dir $(LABEXT_PREFIX))
	cp -r twinbench/labextension $(LABEXT_PREFIX)
	touch $@

# The Voila template, copied where Voila looks for templates (`voila --template=twinbench`): a
# wheel installs it there (setup.py's data_files), an editable install leaves it out. Copied
# again when it changes. A copy, not a symlink, for the same reason as the extension's.
.stamp-voila-template: $(VOILA_TEMPLATE_SOURCES) | .stamp-install
	rm -rf $(VOILA_TEMPLATE_PREFIX) && mkdir -p $(dir $(VOILA_TEMPLATE_PREFIX))
	cp -r $(VOILA_TEMPLATE_DIR) $(VOILA_TEMPLATE_PREFIX)
	touch $@

clean:
	rm -rf build .stamp-* $(VENV) *.egg-info twinbench/labextension
	rm -rf $(LABEXT_DIR)/node_modules $(LABEXT_DIR)/lib $(LABEXT_DIR)/.yarn $(LABEXT_DIR)/tsconfig.tsbuildinfo
	find twinbench \( -name '*.so' -o -name '*.c' \) -delete
