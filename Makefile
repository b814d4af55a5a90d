# Two commands on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BUF    := .cache/buf/node_modules/.bin/buf
DATA   ?= var
LISTEN ?= 127.0.0.1:50051
NODE_AGENT := examples/node-agent
NODE_STAMP := $(NODE_AGENT)/node_modules/.installed-stamp

.PHONY: run demo demo-node node-deps api-docs gpu-check test fuzz crash-test soak bench lint proto check-stubs breaking clean venv

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

## run: the broker on $(LISTEN) (LMDB under ./$(DATA), demo data on first run) and a local worker
run: $(STAMP)
	$(BIN)/python scripts/run_local.py --data-dir $(DATA) --listen $(LISTEN)

## demo: an example agent buys a generate job from `make run` (start that first)
demo: $(STAMP)
	$(BIN)/python examples/demo_agent.py --broker $(LISTEN) --credentials $(DATA)/demo-credentials.json

## demo-node: the same purchase from Node.js (examples/node-agent, grpc-js + the .proto files)
demo-node: $(NODE_STAMP)
	node $(NODE_AGENT)/agent.js --broker $(LISTEN) --credentials $(DATA)/demo-credentials.json

## gpu-check: on a machine with an NVIDIA GPU, a real CUDA job through broker and worker
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py

## test: stub freshness, then the whole suite
test: $(STAMP) $(NODE_STAMP) check-stubs
	$(BIN)/python -m pytest -q

## crash-test: SIGKILL a loaded broker 30 times; every acknowledged operation must survive
crash-test: $(STAMP)
	$(BIN)/python scripts/crash_test.py

## soak: 10 min of mixed load on a real broker and worker; fails if its RSS or fds grow >10%
soak: $(STAMP)
	$(BIN)/python scripts/soak.py

## bench: throughput and latency against a bare grpc.aio echo server (< 10 min; bench/results.json)
bench: $(STAMP)
	$(BIN)/python scripts/bench.py

## fuzz: 20,000 descriptor-generated requests against a real broker and worker (tests/fuzz)
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz.runner --inputs 20000

## proto: regenerate the Python stubs from protos/
proto: $(STAMP)
	$(BIN)/python scripts/protos.py

## api-docs: regenerate docs/api.md from the comments in protos/
api-docs: $(STAMP)
	$(BIN)/python scripts/gen_api_docs.py

check-stubs: $(STAMP)
	$(BIN)/python scripts/protos.py --check

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .cache/buf @bufbuild/buf@1

## lint: ruff on the Python code, buf lint (STANDARD) on the protos
lint: $(STAMP) $(BUF)
	$(BIN)/ruff check .
	$(BUF) lint

## breaking: buf breaking against the previous commit
breaking: $(BUF)
	$(BUF) breaking --against '.git#ref=HEAD~1'

clean:
	rm -rf $(VENV) .cache .pytest_cache
