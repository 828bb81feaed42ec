# Every target sets itself up from scratch: a fresh machine needs python3 (>= 3.11) and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
# The container image: its tag, and the private Docker engine that `make image` starts
# (scripts/docker-engine.sh; point MTPROXY_DOCKER_SOCK at another engine's socket to use it).
IMAGE  ?= mtproxy:latest
MTPROXY_DOCKER_SOCK ?= /run/mtproxy-docker.sock
export MTPROXY_DOCKER_SOCK
export DOCKER_HOST ?= unix://$(MTPROXY_DOCKER_SOCK)
export IMAGE

.PHONY: run test test-compat bench clean image image-multiarch

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[fast]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[fast,test]'
	touch $@ $(VENV)/.installed-run

## run: start the proxy with zero configuration; it prints its links
run: $(VENV)/.installed-run
	$(BIN)/mtproxy run $(ARGS)

## test: the whole test suite (unit, property, integration, real client), with line and
##       branch coverage of src/mtproxy, the `mtproxy` processes the tests start included
test: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench docker scripts
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest $(ARGS)
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report
	$(MAKE) --no-print-directory test-compat

## test-compat: the relay tests again with cryptography 38, the version the container ships
##              (Debian bookworm's python3-cryptography), whose update_into needs spare room
COMPAT := .venv-compat
$(COMPAT)/.installed: pyproject.toml
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install --quiet -e '.[fast,test]' 'cryptography==38.0.4'
	touch $@

test-compat: $(COMPAT)/.installed
	$(COMPAT)/bin/python -c 'import cryptography, sys; sys.exit(cryptography.__version__ != "38.0.4")'
	$(COMPAT)/bin/pytest -q -p no:cacheprovider tests/integration tests/protocol

## bench: the performance table (not a test; numbers vary with the machine)
bench: $(VENV)/.installed-test
	$(BIN)/python bench/run.py $(ARGS)
	$(BIN)/python bench/workers.py $(ARGS)

## image: the container image, built offline (private engine, debootstrap builder, local
##        wheels); saved as dist/mtproxy-image.tar, prints its compressed and unpacked sizes.
##        With uvloop; MTPROXY_EXTRAS= leaves it out. Needs root on Debian (apt, debootstrap,
##        dockerd).
image: | $(BIN)/python
	PYTHON=$(BIN)/python scripts/build-image.sh

## image-multiarch: the above, then the arm64 image the same offline way (Debian's arm64
##        packages, qemu-user-static) and both as one OCI index: dist/mtproxy-oci (+ .tar);
##        loads the arm64 one as mtproxy:arm64 and prints its sizes.
image-multiarch: image
	PYTHON=$(BIN)/python scripts/build-multiarch.sh

clean:
	rm -rf $(VENV) $(COMPAT) dist build src/*.egg-info .coverage .coverage.*
