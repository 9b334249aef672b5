# Two commands do all set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Documented demo/test key: never use it outside the demo and the tests.
export GATEWAY_DEMO_KEY ?= demo-key-not-secret-0123456789abcdef
# Documented demo key the gateway signs outbound identity with (the stubs verify it).
export GATEWAY_DEMO_OUTBOUND_KEY ?= demo-outbound-not-secret-0123456789abcdef

.PHONY: run test lint typecheck policy-check k8s-check pytest packages clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Other ports when 8000 or 9101-9103 are busy: make run DEMO_ARGS="--port 8080 --stub-port 9201"
run: $(STAMP)
	$(BIN)/gateway demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict app

# The shipped policies must lint clean and pass their own suites.
policy-check: $(STAMP)
	$(BIN)/gateway policy lint --strict --config config/demo.yaml policies
	$(BIN)/gateway policy test policies

# The Kubernetes manifests validate (strict: unknown fields fail) against this version.
K8S_VERSION ?= 1.34.0
K8S_MANIFESTS := $(filter-out deploy/k8s/kustomization.yaml,$(wildcard deploy/k8s/*.yaml))
k8s-check: $(STAMP)
	$(BIN)/kubernetes-validate --strict --quiet --kubernetes-version $(K8S_VERSION) $(K8S_MANIFESTS)

# Tests start their own redis-server, redis-sentinel and nginx on loopback and run
# promtool on deploy/prometheus; this installs the Debian packages when missing (apt-get, sudo when not root; see the script).
packages:
	./scripts/ensure-packages.sh

# pytest exits 5 when it collected no tests: that is a failure here.
pytest: $(STAMP) packages
	$(BIN)/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test: lint typecheck policy-check k8s-check pytest

# Benchmarks with peer baselines in one run (bench/README.md); BENCH_ARGS=--quick for a smoke run.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
