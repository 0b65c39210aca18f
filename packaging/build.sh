#!/bin/sh
# Packages a built static binary (`make static-bin`):
#   packaging/build.sh deb  BINARY OUTDIR   -> OUTDIR/litestream_<version>_amd64.deb (dpkg-deb)
#   packaging/build.sh dist BINARY OUTDIR   -> OUTDIR/litestream-<version>-linux-amd64.tar.gz
#                                              and OUTDIR/SHA256SUMS
# <version> is Cargo.toml's. Everything is staged in a temporary directory under OUTDIR and
# owned by root:root in the result, whoever builds it; prints the path of what it wrote.
set -eu
umask 022
cd "$(dirname "$0")/.."

kind=${1:?usage: packaging/build.sh deb|dist BINARY OUTDIR}
bin=${2:?usage: packaging/build.sh deb|dist BINARY OUTDIR}
out=${3:?usage: packaging/build.sh deb|dist BINARY OUTDIR}
[ -x "$bin" ] || { echo "packaging/build.sh: $bin is not an executable (run make static-bin)" >&2; exit 1; }
version=$(sed -n '/^\[package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "packaging/build.sh: no version in Cargo.toml's [package]" >&2; exit 1; }

mkdir -p "$out"
stage=$(mktemp -d "$out/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT

case "$kind" in
deb)
	command -v dpkg-deb >/dev/null || { echo "packaging/build.sh: dpkg-deb not found (Debian: dpkg)" >&2; exit 1; }
	# Debian orders 1.0~rc1 before 1.0; Cargo writes 1.0-rc1.
	debversion=$(printf '%s' "$version" | tr - '~')
	root=$stage/root
	install -D -m 0755 "$bin" "$root/usr/bin/litestream"
	install -d -m 0755 "$root/lib/systemd/system"
	# The source unit is `make install`'s (/usr/local/bin); the package's binary is /usr/bin.
	sed -e 's|^ExecStart=/usr/local/bin/litestream |ExecStart=/usr/bin/litestream |' \
		-e 's|^Documentation=.*|Documentation=man:litestream(1) file:///usr/share/doc/litestream/litestream.yml.example|' \
		-e 's|installed by `make install` (/etc/systemd/system,|installed by the litestream package (/lib/systemd/system,|' \
		-e 's|`make install` creates this user|The package creates this user|' \
		etc/litestream.service >"$root/lib/systemd/system/litestream.service"
	grep -q '^ExecStart=/usr/bin/litestream ' "$root/lib/systemd/system/litestream.service" ||
		{ echo "packaging/build.sh: etc/litestream.service: no ExecStart=/usr/local/bin/litestream to rewrite" >&2; exit 1; }
	chmod 0644 "$root/lib/systemd/system/litestream.service"
	install -D -m 0644 packaging/litestream.yml "$root/etc/litestream.yml"
	install -d -m 0755 "$root/usr/share/man/man1" "$root/usr/share/doc/litestream"
	gzip -9n <packaging/litestream.1 >"$root/usr/share/man/man1/litestream.1.gz"
	gzip -9n <README.md >"$root/usr/share/doc/litestream/README.md.gz"
	install -m 0644 packaging/debian/copyright litestream.yml.example "$root/usr/share/doc/litestream/"
	chmod 0644 "$root/usr/share/man/man1/litestream.1.gz" "$root/usr/share/doc/litestream/README.md.gz"

	install -d -m 0755 "$root/DEBIAN"
	size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
	sed -e "s/@VERSION@/$debversion/" -e "s/@INSTALLED_SIZE@/$size/" packaging/debian/control >"$root/DEBIAN/control"
	install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
	install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
	(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
		xargs md5sum) >"$root/DEBIAN/md5sums"
	chmod 0644 "$root/DEBIAN/md5sums"

	deb=$out/litestream_${debversion}_amd64.deb
	dpkg-deb --root-owner-group --build "$root" "$deb.tmp" >/dev/null
	mv "$deb.tmp" "$deb"
	echo "$deb"
	;;
dist)
	name=litestream-$version-linux-amd64
	top=$stage/$name
	install -D -m 0755 "$bin" "$top/litestream"
	install -m 0644 litestream.yml.example etc/litestream.service README.md LICENSE "$top/"
	install -m 0644 packaging/litestream.1 "$top/"
	tarball=$out/$name.tar.gz
	tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner -czf "$tarball.tmp" "$name"
	mv "$tarball.tmp" "$tarball"
	(cd "$out" && sha256sum "$name.tar.gz" >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
	echo "$tarball"
	echo "$out/SHA256SUMS"
	;;
*)
	echo "packaging/build.sh: unknown kind $kind (deb or dist)" >&2
	exit 2
	;;
esac
