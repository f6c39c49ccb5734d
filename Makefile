# The two commands of the README. Each makes .venv and installs what it needs (torch from this machine's disk
# when it has it, else from PyPI).
PY ?= python3
VENV := .venv
PIP_TORCH := torch==2.14.1 torchvision==0.29.1

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

.PHONY: run test fast install browser
install: $(VENV)/bin/python
	$(VENV)/bin/pip install -q $(PIP_TORCH) -e ".[dev]"

# Headless Chromium for the report's browser test (Debian packages; the test skips where they are missing)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || \
	    echo "chromium not installed: the report's browser test will be skipped"; }

run: install
	$(VENV)/bin/curvature-train

test: install browser
	$(VENV)/bin/pytest -q --durations=10

# The developers' fast loop: every test but the slow ones (2-process DDP, sweeps, whole runs), which `make test` runs
fast: install
	$(VENV)/bin/pytest -q -m "not slow"
