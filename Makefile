# imrelay — run `make help` for the targets.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
CONFIG ?= .imrelay/dev.yaml

.DEFAULT_GOAL := help
.PHONY: help install run demo test lint typecheck check bench images clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## create .venv with every service and the test tools (uv)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --all-packages --frozen

run: install ## run everything locally: embedded NATS, ingress, worker, sender, simulator (Ctrl-C stops)
	$(UV) run --frozen imrelay dev

BOT ?= demo
demo: ## with `make run` going: send a message as the platform would, print the answer (BOT=demo-feishu …)
	$(UV) run --frozen imrelay-sim --config $(CONFIG) send --bot $(BOT) --text "Hello from the $(BOT) simulator! 你好" --wait 15

test: install ## run the test suite (unit, vectors, end-to-end against a real nats-server)
	$(UV) run --frozen pytest

lint: install ## ruff
	$(UV) run --frozen ruff check .

typecheck: install ## mypy --strict
	$(UV) run --frozen mypy shared/src services/*/src tests bench

check: lint typecheck test ## everything CI runs

bench: install ## ingress callbacks/s, sender deliveries/s, streaming latency, each beside a baseline (prints figures)
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } \
		|| { echo "make bench needs wrk (Debian package wrk)"; exit 1; }
	$(UV) run --frozen python bench/ingress_bench.py
	$(UV) run --frozen python bench/sender_bench.py
	$(UV) run --frozen python bench/stream_latency_bench.py

images: install ## build the imrelay image (docker/podman, else buildah from scratch); IMAGE=name:tag
	UV="$(UV)" deploy/images/build.sh $(IMAGE)

clean: ## remove local state (.imrelay: NATS data and the dev config) and caches
	rm -rf .imrelay .pytest_cache .mypy_cache .ruff_cache
