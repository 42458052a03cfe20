# Switchboard: two commands do everything on a fresh Debian 12 machine (as root, with the
# Rust toolchain installed): `make run` and `make test`.

SHELL := /bin/bash
CARGO ?= cargo
# System packages: build needs (libopus), the real peers the tests talk to, and Chromium
# (the dashboard's browser test drives it headless).
PACKAGES := pkg-config libopus-dev ffmpeg sox espeak-ng rtpengine-daemon rtpengine-utils \
            kamailio sip-tester curl chromium
RUN_ARGS ?=

.PHONY: all deps build run test fmt-check clippy unit doc bench-build bench clean

all: build

# Installs what is missing, quietly; does nothing when everything is there. Debian daemons
# (rtpengine, kamailio) must not start as services: a policy-rc.d stops that.
deps:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 1; fi; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	    || { echo "apt-get install failed for:$$missing" >&2; exit 1; }; \
	fi

build: deps
	$(CARGO) build --release --locked -p switchboard-engine -p switchboard-bench

run: build
	./target/release/switchboard serve $(RUN_ARGS)

test: deps fmt-check clippy unit doc bench-build

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --locked

# Compiles every benchmark and runs each once as a smoke test (criterion's test mode).
bench-build:
	$(CARGO) test --benches --locked -p switchboard-perf

# Benchmarks (not part of `make test`, about 20 minutes): Switchboard (io_uring and epoll) and
# rtpengine side by side on loopback, every switchboard-load scenario with capacity ramps, the
# machine probe and the criterion micro-benchmarks; rewrites the generated block of
# docs/performance.md and the charts in docs/perf/. `QUICK=1 make bench` is a smoke run.
bench: deps
	perf/scripts/bench-all.sh

clean:
	$(CARGO) clean
