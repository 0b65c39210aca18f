# litestream-rs: the two set-up commands are `make run` and `make test`.
CARGO ?= cargo
PREFIX ?= /usr/local
TARGET_GNU := x86_64-unknown-linux-gnu
TARGET_MUSL := x86_64-unknown-linux-musl

.PHONY: build run test lint bench static install clean prereqs

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

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# A fully static binary: musl where the target is installed, else glibc with crt-static.
static:
	@if rustup target list --installed 2>/dev/null | grep -qx $(TARGET_MUSL); then \
		$(CARGO) build --release --target $(TARGET_MUSL) && cp target/$(TARGET_MUSL)/release/litestream target/litestream-static; \
	else \
		RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release --target $(TARGET_GNU) && \
		cp target/$(TARGET_GNU)/release/litestream target/litestream-static; \
	fi
	@ls -l target/litestream-static
	@ldd target/litestream-static 2>&1 || true

install: build
	install -D -m 0755 target/release/litestream $(DESTDIR)$(PREFIX)/bin/litestream
	install -D -m 0644 litestream.yml.example $(DESTDIR)/etc/litestream.yml.example

clean:
	$(CARGO) clean
	rm -rf data
