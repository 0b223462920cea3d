# edgestream: every entry point is a target here; CI calls the same ones.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The onnxruntime wheel (the `cpu` or `gpu` extra, never both: the CPU one shadows CUDA): the one the
# virtualenv already has, else cpu. `make install RUNTIME=gpu` in a fresh .venv for an NVIDIA GPU.
RUNTIME ?= $(if $(wildcard $(VENV)/lib/python*/site-packages/onnxruntime_gpu-*.dist-info),gpu,cpu)

.DEFAULT_GOAL := help

# Installs print only when they fail; the full log stays in .venv/install.log.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "making the virtualenv in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing edgestream and its dev tools into $(VENV) (log: $(VENV)/install.log)"
	@{ $(BIN)/python -m pip install --disable-pip-version-check --upgrade pip \
	   && $(BIN)/python -m pip install --disable-pip-version-check -e '.[$(RUNTIME),tools]'; } \
	   >$(VENV)/install.log 2>&1 || { tail -40 $(VENV)/install.log; exit 1; }
	@touch $@

.PHONY: install
install: $(STAMP) ## Make the virtualenv in .venv and install edgestream with its dev tools

.PHONY: jars
jars: $(STAMP) ## Resolve the Kafka broker's jars with Maven (cached outside git; quiet when cached)
	@$(BIN)/edgestream broker fetch --quiet

.PHONY: demo
demo: jars ## Run the demo: local broker, edge workers, simulated fleet, summary
	@$(BIN)/edgestream demo

# promtool and prometheus (Debian's `prometheus` package) for the rule tests and the real-Prometheus test;
# quiet when present. Where it cannot be installed (no apt-get, no root) those tests skip and say why.
# On a machine run by systemd the package also starts a prometheus service: `systemctl disable --now
# prometheus` if it is not wanted.
PROMETHEUS_LOG := $${TMPDIR:-/tmp}/edgestream-prometheus-install.log
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
.PHONY: promtool
promtool: ## Install promtool and prometheus (Debian's package) for the alert-rule tests; quiet when present
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  command -v apt-get >/dev/null || { echo "promtool: no apt-get here; the Prometheus tests skip"; exit 0; }; \
	  echo "installing Debian's prometheus package (log: $(PROMETHEUS_LOG))"; \
	  { $(SUDO) apt-get install -y -q --no-install-recommends prometheus \
	    || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends prometheus; }; \
	  } >$(PROMETHEUS_LOG) 2>&1 \
	  || echo "promtool: could not install prometheus (see the log); the Prometheus tests skip"; }

# The chart tests' tools (deploy/helm/install-tools.sh, into ~/.cache/edgestream/k8s-tools; quiet when
# present): chartcheck, helm's lint and template from Helm's library packages (deploy/helm/chartcheck;
# the whole helm CLI takes 4-9 min to build on 2 cores), kubeconform, and the Kubernetes/KEDA schemas,
# from the package registries. A cold build takes 2.5-5 min on 2 busy cores, so `make test` starts it
# niced in the background (one line) and runs the chart tests last, waiting for it; without Go or the
# registries they skip and say why. `make helm-tools` builds them in the foreground.
.PHONY: helm-tools
helm-tools: $(STAMP) ## Build chartcheck and kubeconform, lay out the schemas (for the chart tests; quiet when present)
	@PYTHON=$(BIN)/python deploy/helm/install-tools.sh

.PHONY: helm-tools-background
helm-tools-background: $(STAMP)
	@PYTHON=$(BIN)/python deploy/helm/install-tools.sh --background

# SeaweedFS's weed, the S3-compatible server of the S3 artifact store's integration tests
# (deploy/s3/install-seaweedfs.sh, from the Go module proxy into ~/.cache/edgestream/s3-tools; quiet when
# present; `install-seaweedfs.sh --background` builds it niced in the background, and the tests wait for
# it). Without Go or the registries those tests skip and say why.
.PHONY: s3-tools
s3-tools: ## Build SeaweedFS's weed for the S3 artifact store's tests (quiet when present)
	@deploy/s3/install-seaweedfs.sh

.PHONY: test
test: helm-tools-background jars promtool ## Run the whole test suite (unit + real-broker integration)
	@$(BIN)/python -m pytest

.PHONY: fuzz
fuzz: $(STAMP) ## Property tests again under SEEDS other seeds (default 20; no broker; ~30 s a seed)
	@tests/fuzz.sh

.PHONY: lint
lint: $(STAMP) ## ruff (lint + format check) and mypy on the whole tree
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy

.PHONY: bench
bench: jars ## Benchmarks: bench/results/*.json and plots
	@$(BIN)/python -m bench.pipeline
	@$(BIN)/python -m bench.gateway

.PHONY: bench-gateway
bench-gateway: jars ## 10,000 device sessions on one gateway, memory and CPU, 1,000 disconnects (bench/results/gateway.json; ~6 min)
	@$(BIN)/python -m bench.gateway

.PHONY: bench-flood
bench-flood: jars ## One device flooding its region, with and without the device quota, and the recovery (bench/results/flood.json; ~5 min)
	@$(BIN)/python -m bench.flood

.PHONY: bench-gpu
bench-gpu: $(STAMP) ## Bare onnxruntime on CUDA/TensorRT and the worker's path beside it (bench/results/gpu.json; says so without a GPU)
	@$(BIN)/python -m bench.gpu

.PHONY: bench-drift
bench-drift: $(STAMP) ## Drift detector's false alarms and detections, simulated (bench/results/drift.json; < 1 min)
	@$(BIN)/python -m bench.drift

.PHONY: bench-device
bench-device: $(STAMP) ## Device SDK: CPU per call, fallback run and deadline (bench/results/device.json; < 1 min)
	@$(BIN)/python -m bench.device

.PHONY: bench-devicefaults
bench-devicefaults: jars ## Devices through real gateways and workers: a worker killed (fallback), a gateway killed (failover) (bench/results/devicefaults.json; ~1.5 min)
	@$(BIN)/python -m bench.devicefaults

.PHONY: bench-aggregator
bench-aggregator: $(STAMP) ## The aggregator's CPU per record and loop lag, before vs after (bench/results/aggregator.json; ~3.5 min)
	@$(BIN)/python -m bench.aggregator

.PHONY: faults
faults: jars ## Exactly-once under kill -9, zombies, rebalances, broker restarts, cluster node kills, hostile input (bench/results/faults.json)
	@$(BIN)/python -m bench.faults

.PHONY: clean
clean: ## Stop the local broker and remove local state (.edgestream)
	-@test -x $(BIN)/edgestream && $(BIN)/edgestream broker stop
	rm -rf .edgestream

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
