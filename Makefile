# Two commands on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BUF    := .cache/buf/node_modules/.bin/buf
# `make run`'s addresses and data directory (README.md, "Try it with grpcurl"):
# override on the command line or from the environment, e.g. make run DATA=/tmp/x
DATA   ?= var
LISTEN ?= 127.0.0.1:50051
CONSOLE ?= 127.0.0.1:8080
WORKER_LISTEN ?= 127.0.0.1:50052
METRICS_LISTEN ?= 127.0.0.1:9464
WORKER_METRICS_LISTEN ?= 127.0.0.1:9465
# `make cluster`'s second and third brokers (the first is on $(LISTEN)).
CLUSTER_LISTEN ?= 127.0.0.1:50061,127.0.0.1:50071
CLUSTER_METRICS_LISTEN ?= 127.0.0.1:9474,127.0.0.1:9484
NODE_AGENT := examples/node-agent
NODE_STAMP := $(NODE_AGENT)/node_modules/.installed-stamp
CHROMIUM   := /usr/bin/chromium
# Debian's PostgreSQL server: the store tests start a throwaway cluster with it.
PG_SERVER  := /usr/bin/pg_ctlcluster

.PHONY: run cluster demo demo-node node-deps api-docs gpu-check console-screenshots test fuzz crash-test soak bench lint proto check-stubs breaking clean venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[worker,dev]' 'torch==2.13.0'
	touch $(STAMP)

venv: $(STAMP)

# The Node.js agent's packages, exactly as locked (tests run it too).
$(NODE_STAMP): $(NODE_AGENT)/package.json $(NODE_AGENT)/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix $(NODE_AGENT)
	touch $@

node-deps: $(NODE_STAMP)

## run: the broker on $(LISTEN) (LMDB under $(DATA), demo data on first run), a local worker on $(WORKER_LISTEN) and the console on $(CONSOLE)
run: $(STAMP)
	$(BIN)/python scripts/run_local.py --data-dir '$(DATA)' --listen '$(LISTEN)' \
	    --worker-listen '$(WORKER_LISTEN)' --metrics-listen '$(METRICS_LISTEN)' \
	    --worker-metrics-listen '$(WORKER_METRICS_LISTEN)' --console-listen '$(CONSOLE)'

## cluster: a throwaway PostgreSQL, three brokers sharing it on $(LISTEN), :50061 and :50071, and a local worker on $(WORKER_LISTEN) that knows all three (docs/scale-out.md)
cluster: $(STAMP) $(PG_SERVER)
	$(BIN)/python scripts/run_cluster.py --data-dir '$(DATA)' \
	    --listen '$(LISTEN),$(CLUSTER_LISTEN)' --worker-listen '$(WORKER_LISTEN)' \
	    --metrics-listen '$(METRICS_LISTEN),$(CLUSTER_METRICS_LISTEN)' \
	    --worker-metrics-listen '$(WORKER_METRICS_LISTEN)'

## demo: an example agent buys a generate job from `make run` (start that first)
demo: $(STAMP)
	$(BIN)/python examples/demo_agent.py --broker '$(LISTEN)' --credentials '$(DATA)/demo-credentials.json'

## demo-node: the same purchase from Node.js (examples/node-agent, grpc-js + the .proto files)
demo-node: $(NODE_STAMP)
	node $(NODE_AGENT)/agent.js --broker '$(LISTEN)' --credentials '$(DATA)/demo-credentials.json'

## gpu-check: on a machine with an NVIDIA GPU, a real CUDA job through broker and worker
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py

# The console's browser tests drive Debian's headless Chromium (these machines run as root).
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

## console-screenshots: the console's browser tests, saving the main pages to docs/console
console-screenshots: $(STAMP) $(CHROMIUM)
	BROKER_CONSOLE_SCREENSHOTS=docs/console $(BIN)/python -m pytest -q tests/integration/test_console.py

# The tests start their own PostgreSQL from Debian's server (these machines run as root;
# elsewhere: sudo apt-get install postgresql, and the tests run it as you).
$(PG_SERVER):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql

## test: stub freshness, then the whole suite
test: $(STAMP) $(NODE_STAMP) $(CHROMIUM) $(PG_SERVER) check-stubs
	$(BIN)/python -m pytest -q

## crash-test: SIGKILL a loaded broker 30 times, then a prefork one (its whole process group) 30 times; every acknowledged operation must survive. CRASH_STORE=postgresql: three brokers on one PostgreSQL, 30 kills of brokers and of the database
CRASH_STORE ?= lmdb
crash-test: $(STAMP) $(if $(filter postgresql,$(CRASH_STORE)),$(PG_SERVER))
ifeq ($(CRASH_STORE),postgresql)
	$(BIN)/python scripts/crash_test.py --store postgresql
else
	$(BIN)/python scripts/crash_test.py
	$(BIN)/python scripts/crash_test.py --processes 2
endif

## soak: 10 min (SOAK_MINUTES) of mixed load on a real broker and worker; fails if their memory or fds grow >10% or still rise at the end
SOAK_MINUTES ?= 10
SOAK_ARGS ?=
soak: $(STAMP)
	$(BIN)/python scripts/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

## bench: throughput and latency against a bare grpc.aio echo server, and the PostgreSQL figures (about 10 min; bench/results.json)
bench: $(STAMP) $(PG_SERVER)
	$(BIN)/python scripts/bench.py

## fuzz: 20,000 descriptor-generated requests against a real broker and worker (tests/fuzz)
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz.runner --inputs 20000

## proto: regenerate the Python stubs from protos/
proto: $(STAMP)
	$(BIN)/python scripts/protos.py

## api-docs: regenerate docs/api.md from the comments in protos/, docs/errors.md from the ErrorReason enum and the code
api-docs: $(STAMP)
	$(BIN)/python scripts/gen_api_docs.py
	$(BIN)/python scripts/gen_error_docs.py

check-stubs: $(STAMP)
	$(BIN)/python scripts/protos.py --check

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .cache/buf @bufbuild/buf@1

## lint: ruff, the import layers (import-linter), mypy, buf lint (STANDARD) and buf breaking
lint: $(STAMP) $(BUF)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BUF) lint
	$(MAKE) --no-print-directory breaking

## breaking: buf breaking against the merge base with main (on main itself: the previous commit)
breaking: $(BUF)
	base=$$(git merge-base HEAD $${BREAKING_AGAINST:-main} 2>/dev/null || git rev-parse HEAD~1); \
	if [ "$$base" = "$$(git rev-parse HEAD)" ]; then base=$$(git rev-parse HEAD~1); fi; \
	echo "buf breaking against $$base"; \
	$(BUF) breaking --against ".git#ref=$$base"

clean:
	rm -rf $(VENV) .cache .pytest_cache
