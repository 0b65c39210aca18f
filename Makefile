# litestream-rs: the two set-up commands are `make run` and `make test`.
CARGO ?= cargo
PREFIX ?= /usr/local
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
TARGET_GNU := x86_64-unknown-linux-gnu
TARGET_MUSL := x86_64-unknown-linux-musl

.PHONY: build run test lint bench soak static static-bin install clean prereqs fuzz

build:
	$(CARGO) build --release

# Build, then replicate a demo database (./data/app.db -> ./data/replica) with the shipped
# example config while a small writer commits a row a second. Ctrl-C stops both.
run: build
	@scripts/demo.sh

# Everything CI checks: formatting, lints, unit and integration tests.
test: prereqs
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test

prereqs:
	@scripts/install-test-prereqs.sh --check-only || scripts/install-test-prereqs.sh

# Release-built benchmarks (not part of `make test`): prints one table and writes BENCHMARKS.md.
# `make bench BENCH_ARGS=--quick` (or BENCH_QUICK=1): a short run, written to
# bench/target/BENCHMARKS.quick.md instead; `BENCH_ARGS="--only 9,10"`: those sections only
# (9-12: no daemon / ours / Litestream v0.3.13 side by side; the list: `BENCH_ARGS=--help`).
# v0.3.13 comes from LITESTREAM_V0313 or is unpacked into bench/target from ../shared/anchors;
# without it those rows say why. Source: bench/.
bench:
	$(CARGO) build --release
	cd bench && $(CARGO) run --release -- $(BENCH_ARGS)

# Fault-injection soak (tests/soak.rs): `make soak SECONDS=600 [SEED=n]`. Prints the steps per
# fault kind, restores checked, rows committed and lost, peak RSS and the seed to replay.
# `make test` runs its 60 s version.
SECONDS ?= 300
soak: prereqs
	SOAK_SECONDS=$(SECONDS) $(if $(SEED),SOAK_SEED=$(SEED)) $(CARGO) test --test soak -- --nocapture

# No `cargo audit`/`cargo deny` here: both fetch the RustSec advisory DB from GitHub, which
# this build host cannot reach (no registry carries the DB).
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# A fully static binary: musl where the target and a musl C compiler (Debian: musl-tools, for
# the bundled SQLite and ring) are installed, else glibc with crt-static
# (non-PIE, so `ldd` says "not a dynamic executable"). scripts/static-check.sh prints the
# size and runs `version` and a file-replica round trip with it.
# Release profile (LTO, one codegen unit, panic=abort, stripped) optimised for size: this
# binary is for small hosts, and opt-level s keeps it under 6 MB (opt-level 3: about 7 MB).
STATIC_ENV := CARGO_PROFILE_RELEASE_OPT_LEVEL=s
# The tests run `make static-bin` (tests/common::static_binary) under `cargo test`, which hands
# down its package's variables (CARGO_PKG_*, CARGO_MANIFEST_* …, tracked by ring's build script)
# and the build script's LITESTREAM_COMMIT. Cleared, and the commit set, for every caller: else
# each switch between a shell and the tests is another 2-minute LTO build.
STATIC_COMMIT := $(or $(LITESTREAM_COMMIT),$(shell git rev-parse --short=12 HEAD 2>/dev/null))
STATIC_UNSET := CARGO_PKG_[A-Z_]*\|CARGO_MANIFEST_[A-Z_]*\|CARGO_CRATE_NAME\|CARGO_BIN_NAME\|CARGO_PRIMARY_PACKAGE\|OUT_DIR
static: static-bin
	@scripts/static-check.sh target/litestream-static

# The static binary alone (no check): what `make deb`, `make dist` and the empty-root test use.
static-bin:
	@unset $$(env | sed -n 's/^\($(STATIC_UNSET)\)=.*/\1/p'); export LITESTREAM_COMMIT=$(STATIC_COMMIT); \
	if rustup target list --installed 2>/dev/null | grep -qx $(TARGET_MUSL) && command -v x86_64-linux-musl-gcc >/dev/null; then \
		$(STATIC_ENV) $(CARGO) build --release --target $(TARGET_MUSL) && cp target/$(TARGET_MUSL)/release/litestream target/litestream-static; \
	else \
		$(STATIC_ENV) RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static' $(CARGO) build --release --target $(TARGET_GNU) && \
		cp target/$(TARGET_GNU)/release/litestream target/litestream-static; \
	fi

# The Debian package target/litestream_<version>_amd64.deb (dpkg-deb; packaging/): the static
# binary in /usr/bin, the unit (never enabled or started by the package), /etc/litestream.yml
# as a conffile, the man page; postinst creates the system user. tests/package.rs checks it.
.PHONY: deb dist
deb: static-bin
	@packaging/build.sh deb target/litestream-static target

# Release archive target/dist/litestream-<version>-linux-amd64.tar.gz (static binary, example
# config, unit, man page, README, LICENSE) and target/dist/SHA256SUMS.
dist: static-bin
	@packaging/build.sh dist target/litestream-static target/dist

# Binary, example config and systemd unit (DESTDIR for staging, e.g. packaging).
# Never overwrites a live /etc/litestream.yml: only the example is installed.
install: build
	install -D -m 0755 target/release/litestream $(DESTDIR)$(PREFIX)/bin/litestream
	install -D -m 0644 litestream.yml.example $(DESTDIR)/etc/litestream.yml.example
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed 's|/usr/local/bin/litestream|$(PREFIX)/bin/litestream|' etc/litestream.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/litestream.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/litestream.service
	@# The unit runs as the system user `litestream`: create it on a real install (as root).
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && ! id litestream >/dev/null 2>&1; then \
		useradd --system --home-dir /var/lib/litestream --no-create-home --shell /usr/sbin/nologin litestream && \
		echo "created system user litestream"; \
	fi
	@echo "installed; next: write /etc/litestream.yml, then systemctl daemon-reload && systemctl enable --now litestream"

clean:
	$(CARGO) clean
	rm -rf data

# Fuzzing with cargo-fuzz (libFuzzer, nightly; see fuzz/README.md): each target in turn for
# FUZZ_SECONDS, one job, seeded from testdata/fuzz/<target>/ and its saved regressions. New
# inputs go to fuzz/corpus/<target>/, crashes to fuzz/artifacts/<target>/ (both gitignored),
# the full log to fuzz/target/logs/<target>.log; the final stats lines are printed.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := wal_parser replica_names config_parser restore_segment age_reader
FUZZ_CARGO ?= cargo +nightly
fuzz:
	@scripts/install-fuzz-prereqs.sh --check-only || scripts/install-fuzz-prereqs.sh
	@mkdir -p fuzz/target/logs
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		reg=testdata/fuzz/regressions/$$t; [ -d $$reg ] || reg=; \
		log=fuzz/target/logs/$$t.log; \
		echo "fuzz: $$t for $(FUZZ_SECONDS)s (log: $$log)"; \
		$(FUZZ_CARGO) fuzz run $$t fuzz/corpus/$$t testdata/fuzz/$$t $$reg -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
			>$$log 2>&1 || { tail -n 60 $$log; echo "fuzz: $$t FAILED (inputs: fuzz/artifacts/$$t/)"; exit 1; }; \
		grep -E '^#[0-9]+[[:space:]]+DONE|^Done |^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' $$log; \
	done
