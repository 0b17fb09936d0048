#!/usr/bin/env bash
# Builds what an operator installs, from one git revision (`make release`; docs/DEPLOY.md,
# "Releases"):
#   deploy/release.sh [REV] [OUT_DIR]      REV default HEAD, OUT_DIR default target/release-dist
# writes to OUT_DIR
#   pkraft-VERSION-ARCH-linux.tar.gz   pkraft-VERSION/ with bin/pkraft, the example and dev
#                                      configs, the systemd unit, sysusers file and configs,
#                                      README.md, CHANGELOG.md, the two licence texts
#                                      and the operator docs
#   SHA256SUMS                         sha256sum of the tarball (`sha256sum -c SHA256SUMS`)
# and, when a docker daemon answers, the container image pkraft:VERSION from deploy/docker.
#
# Reproducible: the sources are REV's tree exported with `git archive` (nothing of the working
# tree), the build is `cargo build --release --locked` in a fresh target dir with the build
# paths mapped to fixed ones (`--remap-path-prefix`), `PKRAFT_BUILD_COMMIT` set to REV's commit,
# and the tarball is made with REV's commit time as every file's time, sorted names, owner 0 and
# no gzip timestamp. Two runs for one revision on one toolchain give the same SHA256SUMS
# (docs/TESTING.md, "Releases", has the check).
set -euo pipefail
cd "$(dirname "$0")/.."
# The tarball's directory modes come from the umask: the same for every run.
umask 022

rev=${1:-HEAD}
out=$(realpath -m "${2:-target/release-dist}")
commit=$(git rev-parse --verify "$rev^{commit}")
short=$(git rev-parse --short=12 "$commit")
epoch=$(git show -s --format=%ct "$commit")
version=$(git show "$commit:Cargo.toml" |
  sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p')
[ -n "$version" ] || { echo "release: no [workspace.package] version in $rev's Cargo.toml" >&2; exit 1; }
arch=$(uname -m)
name=pkraft-$version
log() { echo "release: $*" >&2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/src
mkdir -p "$src" "$out"
git archive "$commit" | tar -x -C "$src"
log "building $name ($short) in $src"
# Fixed path prefixes, for rustc and for the C compiler (ring and aws-lc build C with debug
# info): the binary names neither the temporary directory nor this machine's cargo home, so a
# rebuild in another directory, with the same Rust toolchain, C compiler and linker, makes the
# same bytes.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
# RUSTFLAGS replaces .cargo/config.toml's flags, so its one flag is passed here too: the AVX-512
# IFMA ed25519 arithmetic on x86_64 (chosen at start, so the binary still runs on any x86_64).
# Only for a revision whose config asks for it, so that an older tag still builds the same bytes.
dalek_flags=
if [ "$arch" = x86_64 ] &&
  grep -qsE '^[[:space:]]*rustflags.*curve25519_dalek_backend="avx512"' \
    "$src/.cargo/config.toml"; then
  dalek_flags='--cfg curve25519_dalek_backend="avx512" '
fi
(
  cd "$src"
  PKRAFT_BUILD_COMMIT=$short \
    SOURCE_DATE_EPOCH=$epoch \
    CARGO_TARGET_DIR=$src/target \
    RUSTFLAGS="${dalek_flags}--remap-path-prefix=$src=/build/pkraft --remap-path-prefix=$cargo_home=/build/cargo" \
    CFLAGS="-ffile-prefix-map=$src=/build/pkraft -ffile-prefix-map=$cargo_home=/build/cargo" \
    cargo build --release --locked -p pkraft
)
"$src/target/release/pkraft" --version | grep -qxF "pkraft $version ($short)" ||
  { log "the binary does not say pkraft $version ($short)"; exit 1; }

stage=$work/stage/$name
install -D -m 0755 "$src/target/release/pkraft" "$stage/bin/pkraft"
install -D -m 0644 -t "$stage/config" "$src/config/example.toml" "$src/config/dev.toml"
install -D -m 0644 -t "$stage/systemd" "$src"/deploy/systemd/*
install -D -m 0644 -t "$stage" "$src/README.md" "$src/CHANGELOG.md" \
  "$src/LICENSE-MIT" "$src/LICENSE-APACHE"
install -D -m 0644 -t "$stage/docs" "$src"/docs/*.md
tarball=$name-$arch-linux.tar.gz
tar -C "$work/stage" --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
  --mode=go-w -cf - "$name" | gzip -n -9 >"$out/$tarball"
(cd "$out" && sha256sum "$tarball" >SHA256SUMS)
log "wrote $out/$tarball"
cat "$out/SHA256SUMS"

# A docker client without a daemon it can reach (a CI container) builds no image either.
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  log "building the container image pkraft:$version"
  docker build -f "$src/deploy/docker/Dockerfile" -t "pkraft:$version" \
    --build-arg "PKRAFT_BUILD_COMMIT=$short" "$src"
else
  log "no docker daemon here: the container image is not built (docs/DEPLOY.md, \"Docker\")"
fi
