#!/usr/bin/env bash
# Builds two small local images without pulling anything: each is a root filesystem holding
# a binary of this repository plus exactly the shared libraries `ldd` lists for it, imported
# with `docker import` (no base image, no registry).
#
#   strata:local      the broker (`strata`) and `stratactl`; data in /data, Kafka on 9092,
#                     metrics and probes on 9644
#   strata-s3:local   `strata-s3`, an S3-compatible server (the s3s-fs crate); data in /data,
#                     S3 on 9000, credentials S3_ACCESS_KEY / S3_SECRET_KEY
#
# Usage: deploy/build-images.sh            (release build)
#        PROFILE=debug deploy/build-images.sh   (reuses a debug build; what CI does)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
case "$profile" in
  release) flag=--release ;;
  debug) flag= ;;
  *) echo "PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 1; }

cargo build $flag --bin strata --bin stratactl
cargo build $flag -p strata-tests --bin strata-s3

# Copies binaries (stripped) and the libraries they load into a root under $1.
fill_root() {
  local root=$1; shift
  mkdir -p "$root/usr/local/bin" "$root/data" "$root/tmp" "$root/etc/ssl/certs"
  chmod 1777 "$root/tmp"
  for bin in "$@"; do
    strip -o "$root/usr/local/bin/$(basename "$bin")" "$bin"
    # "libx.so => /path (0x…)" and the loader "/lib64/ld-linux-x86-64.so.2 (0x…)".
    ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
      while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
      done
  done
  # TLS to S3 over https needs the CA bundle; name lookups need these files.
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  fi
  printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
  printf 'root:x:0:0:root:/data:/nonexistent\n' > "$root/etc/passwd"
}

build() {
  local tag=$1; shift
  local changes=(); while [ "$1" != "--" ]; do changes+=(--change "$1"); shift; done; shift
  local root; root=$(mktemp -d)
  fill_root "$root" "$@"
  tar -C "$root" -c . | docker import "${changes[@]}" - "$tag" >/dev/null
  rm -rf "$root"
  echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}

dir=target/$profile
build strata:local \
  'ENTRYPOINT ["/usr/local/bin/strata"]' \
  'ENV STRATA_DATA_DIR=/data STRATA_KAFKA__LISTEN=0.0.0.0:9092 STRATA_HTTP__LISTEN=0.0.0.0:9644' \
  'WORKDIR /data' 'EXPOSE 9092' 'EXPOSE 9644' \
  -- "$dir/strata" "$dir/stratactl"
build strata-s3:local \
  'ENTRYPOINT ["/usr/local/bin/strata-s3", "--listen", "0.0.0.0:9000", "--root", "/data"]' \
  'WORKDIR /data' 'EXPOSE 9000' \
  -- "$dir/strata-s3"
