# Switchboard: two commands do everything on a fresh Debian 12 machine (as root, with the
# Rust toolchain installed): `make run` and `make test`.

SHELL := /bin/bash
CARGO ?= cargo
# System packages: build needs (libopus), and the real peers the tests talk to.
PACKAGES := pkg-config libopus-dev ffmpeg sox espeak-ng rtpengine-daemon rtpengine-utils \
            kamailio sip-tester curl
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

# Benchmarks (not part of `make test`): criterion micro-benchmarks, then the relay against
# rtpengine side by side. Figures go into docs/performance.md by hand, with these commands.
bench: deps
	$(CARGO) bench --locked -p switchboard-perf -- --warm-up-time 1 --measurement-time 3
	perf/scripts/relay-compare.sh 100 1000

clean:
	$(CARGO) clean
