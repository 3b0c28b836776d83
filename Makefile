# Two commands do all set-up on a fresh machine:
#   make run    live transcription (Whisper tiny.en) + text-to-speech (voice joe) with the embedded defaults
#   make test   the test suite
# Both create or reuse .venv and install what is needed (Debian packages too).

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# The CPU build of torch that lies on this machine's disk; the GPU machine has 2.11.
TORCH_SPEC  ?= torch==2.13.0
# libportaudio2: sounddevice (legato mic); pulseaudio + ALSA's pulse plugin: the virtual microphone of the mic test;
# chromium: the browser-page test (headless, fake microphone).
DEB_PACKAGES := libportaudio2 libsndfile1 pulseaudio pulseaudio-utils libasound2-plugins chromium
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test run venv deb clean help

help:
	@echo "make run   - serve live transcription (Whisper tiny.en) on ws://\$$HOST:\$$PORT (default 127.0.0.1:8765) and text-to-speech (voice joe) over gRPC on \$$HOST:50051"
	@echo "make test  - create/reuse .venv, install, run the test suite"

deb:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project description changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m legato.server.tts_proto
	touch $(STAMP)

venv: deb $(STAMP)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

HOST ?= 127.0.0.1
PORT ?= 8765

run: venv
	$(VENV)/bin/legato serve --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
