# sidecache — two commands do all the set-up on a fresh Debian machine with Go:
#   make run    start a local MariaDB + Redis with sample data and serve it (REPLICA=1: and a
#               MariaDB replica that loads read)
#   make test   install what is missing, then run every test, integration tests included

GO      ?= go
BIN     := bin/sidecache
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LISTEN  ?= 127.0.0.1:8080
REPLICA ?=
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build run test soak deps deps-browser deps-bench bench bench-hit outage demo demo-docs vet clean

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/sidecache
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)-demo ./cmd/sidecache-demo

# deps installs Debian's mariadb-server and redis-server when they are missing.
deps:
	@missing=""; \
	[ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null 2>&1 || missing="$$missing mariadb-server"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# deps-browser installs Debian's chromium, in which the tests open the demos' reports.
deps-browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

deps-bench: deps
	@command -v wrk >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends wrk; }

run: deps build
	$(GO) build -o bin/devstack ./internal/devstack/cmd/devstack
	exec bin/devstack -bin $(BIN) -listen $(LISTEN) $(if $(REPLICA),-replica)

vet:
	$(GO) vet ./...

test: deps deps-browser vet
	SIDECACHE_INTEGRATION=required $(GO) test -race -count=1 -p 1 -timeout 30m ./...

# soak runs the randomized consistency test (every key type, inserts, updates, key moves, bulk
# transactions, TRUNCATE and table swaps, with the CDC leader killed, Redis restarted empty and
# 20% of deletes failing) for SOAK (default 10m). SIDECACHE_SEED=n replays a run's operations.
SOAK ?= 10m
# SOAK_TEST=TestChaosConsistencyNearCache runs it with every sidecar's near cache on.
SOAK_TEST ?= TestChaosConsistency
soak: deps
	SIDECACHE_INTEGRATION=required SIDECACHE_SOAK=$(SOAK) $(GO) test -count=1 -timeout 0 -run '^$(SOAK_TEST)$$' -v ./cmd/sidecache

# bench measures every performance figure in turn (the hit path with and without the near
# cache, binlog lag and catch-up, preload, the settle with failing deletes, RSS), each against its
# anchor in the same run, and prints one table. BENCH_RUNS runs of each (hit-path rounds: twice
# that); BENCH_ONLY=hit|near|binlog|preload|settle runs one. Run it on a quiet machine.
BENCH_RUNS ?= 3
BENCH_ONLY ?=
bench: deps-bench build
	$(GO) build -o bin/hitpath ./internal/loadtest/hitpath
	$(GO) build -o bin/preloadbench ./internal/loadtest/preload
	$(GO) build -o bin/bench ./internal/loadtest/bench
	bin/bench -bin $(BIN) -runs $(BENCH_RUNS) -only "$(BENCH_ONLY)"

# bench-hit compares the hit path with a bare net/http + go-redis handler in one run.
# HITPATH_FLAGS adds flags: -near (the near cache on), -calibrate, -rounds N (bin/hitpath -h).
HITPATH_FLAGS ?=
bench-hit: deps-bench build
	$(GO) build -o bin/hitpath ./internal/loadtest/hitpath
	bin/hitpath -bin $(BIN) $(HITPATH_FLAGS)

# outage runs two sidecars under reads and writes while Redis goes away: SCENARIO kill (default:
# killed, down 8 s, back empty), unavailable (degraded.mode unavailable), sentinel (the master
# killed, the replica promoted) or hang (SIGSTOP for 8 s). OUTAGE_FLAGS adds flags
# (bin/outage -h lists them).
SCENARIO ?= kill
OUTAGE_FLAGS ?=
outage: deps build
	$(GO) build -o bin/outage ./internal/loadtest/outage
	bin/outage -bin $(BIN) -scenario $(SCENARIO) $(OUTAGE_FLAGS)

# demo runs the fault-injection demos (DEMO: all, or one of breakdown, penetration, avalanche,
# redis-outage, stale, failed-deletes), each on its own MariaDB and Redis, and writes
# DEMO_OUT/NAME.html.
DEMO ?= all
DEMO_OUT ?= sidecache-demo
demo: deps build
	$(BIN) demo $(DEMO) --out $(DEMO_OUT)

# demo-docs runs the demos and saves a screenshot of each report in docs/, as the README shows.
CHROMIUM_FLAGS := --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	--disable-background-networking --disable-component-update --disable-sync --window-size=1200,2400
demo-docs: deps-browser demo
	@mkdir -p docs
	@for f in $(DEMO_OUT)/*.html; do \
		n=$$(basename $$f .html); profile=$$(mktemp -d); \
		chromium $(CHROMIUM_FLAGS) --user-data-dir=$$profile --screenshot=docs/demo-$$n.png "file://$$(realpath $$f)" >/dev/null 2>&1; \
		rm -rf $$profile; echo "docs/demo-$$n.png"; \
	done

clean:
	rm -rf bin $(DEMO_OUT)
