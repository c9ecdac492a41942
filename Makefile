# `make demo` and `make test` bootstrap .venv on first use (PyPI needed once), then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.jaxnorm-installed

.PHONY: demo smoke test install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# The project's main job: the BatchNorm ablation on the offline digits, plots + summary.md
# in results/ablation/digits/plots/ (three seeds, 1-2 min on 2 CPU cores).
demo: $(STAMP)
	$(PY) -m experiments.ablation

# An end-to-end forward/backward smoke of every model in the zoo.
smoke: $(STAMP)
	$(PY) -m experiments.smoke

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal  # two workers (the CI machine has 2 cores); idle workers steal queued tests, so the long ones do not pile up at the end

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis results
