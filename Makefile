# The README's commands. Every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install run test lint bench manifests clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/amfs-sidecar --embedded-s3

test: $(STAMP)
	$(BIN)/ruff check .
	# Three workers on two cores: most tests wait on sidecars, polls and S3, not the CPU;
	# loadfile keeps a module's shared servers in one worker.
	$(BIN)/python -m pytest -m "not slow" -n 3 --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy sidecar/amfs_sidecar operator/amfs_operator

# amfs-adapter-s3 provides amfs_s3 too, so it gets a virtualenv of its own (.venv-upstream).
bench: $(STAMP)
	$(BIN)/python -m bench.upstream_venv
	$(BIN)/python -m bench.run_all

manifests: $(STAMP)
	$(BIN)/python scripts/render_manifests.py deploy/

clean:
	rm -rf $(VENV) .venv-upstream .run .pytest_cache
