# bpfdb — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
DATA ?= $(CURDIR)/data
MNT ?= $(CURDIR)/mnt
BIN := target/release/bpfdb
# Debian packages the build, the mount and the tests need; then what
# `make bench` compares against (Redis, redis-benchmark; memcached, the
# baseline of the memcached UDP section) and the font its plots are
# labelled with; then perf, for profiling the engine and daemon
# (`perf record -e cpu-clock -g -p PID`; this VM has no hardware counters).
DEB_PACKAGES := clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config fuse3 bpftool make binutils \
	strace perl util-linux systemd iproute2 rsync \
	redis-server redis-tools memcached fonts-dejavu-core \
	linux-perf

.PHONY: deps build run stop test check install bench fmt clippy clean

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

build: deps
	$(CARGO) build --release --workspace

# Mounts a database on ./mnt with its data in ./data, in the background.
run: build
	@mkdir -p $(DATA) $(MNT)
	@if mountpoint -q $(MNT); then echo "$(MNT) is already mounted"; else \
	  $(BIN) $(DATA) $(MNT) && echo "mounted: try  echo hello > $(MNT)/greeting; cat $(MNT)/greeting; umount $(MNT)"; fi

stop:
	-umount $(MNT)

test: build
	$(CARGO) test --release --workspace -- --test-threads=2

# Lints the CI also enforces.
check: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/bpfdb
	ln -sf $(PREFIX)/bin/bpfdb $(DESTDIR)/sbin/mount.fuse.bpfdb 2>/dev/null || true

# Prints Markdown tables and keeps them in BENCHMARKS.md, with the plots it
# links (bench-*.png) next to it. pipefail: a failed bench fails the target
# instead of leaving a truncated BENCHMARKS.md behind a successful tee.
bench: build
	set -o pipefail; BPFDB_BENCH_OUT=$(CURDIR) $(CARGO) run --release -p bpfdb-bench | tee BENCHMARKS.md

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
