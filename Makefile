# The two commands of the README. Each makes .venv and installs what it needs (torch from this machine's disk
# when it has it, else from PyPI).
PY ?= python3
VENV := .venv
PIP_TORCH := torch==2.14.1 torchvision==0.29.1

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

.PHONY: run test install
install: $(VENV)/bin/python
	$(VENV)/bin/pip install -q $(PIP_TORCH) -e ".[dev]"

run: install
	$(VENV)/bin/curvature-train

test: install
	$(VENV)/bin/pytest -q --durations=10
