#!/usr/bin/env bash
# Builds OCI images without Docker: the evaluator and operator images from the release binaries, as
# their Dockerfiles declare them, and the test node's own image (nodetool: the pod sandbox and the
# client pod). umoci (Debian package) writes an OCI image layout; each image is saved as a tar of that
# layout, ready for `ctr images import`, in a cache outside the repository keyed by content.
#
#   build.sh evaluator|operator   prints the path of pbflags-<name>-<key>.tar (builds the release binary)
#   build.sh nodetool             prints the path of nodetool-<key>.tar, tagged 1 (needs e2e/controlplane/build.sh)
#
# What goes into an image follows the final stage of its Dockerfile: each `COPY --from=build /NAME DEST`
# is the release binary NAME at DEST, plus what the distroless base (cc-debian12:nonroot) provides and
# the binary needs: the shared libraries it links (found with ldd, so the image has the glibc the binary
# was built against), /etc/passwd and /etc/group naming the nonroot user 65532, CA certificates, /tmp,
# and no shell. USER, ENTRYPOINT, CMD and EXPOSE become the image configuration. The image name and tag
# are recorded in the layout (`org.opencontainers.image.ref.name`); import with
# `ctr images import --base-name docker.io/library/pbflags-<name> TAR`.
#
# Env: PBFLAGS_IMAGE_CACHE (default ~/.cache/pbflags/images), PBFLAGS_IMAGE_TAG (default: the workspace
# version), CARGO_TARGET_DIR (from scripts/lib.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../../scripts/lib.sh"
what=${1:-}
cache=${PBFLAGS_IMAGE_CACHE:-$HOME/.cache/pbflags/images}
tag=${PBFLAGS_IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)}
log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v umoci >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umoci >&2
}

# The final stage of a Dockerfile: its lines after the last FROM, with continuations joined.
final_stage() { sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$1" | awk '/^FROM /{s=""} {s=s $0 "\n"} END{printf "%s", s}'; }
# A JSON-array instruction (ENTRYPOINT ["a","b"]) as its words, one a line.
json_words() { sed -n "s/^$1 \[\(.*\)\]\$/\1/p" | tr ',' '\n' | sed 's/^ *"//; s/" *$//'; }

# stage_rootfs DIR BINARY...: the files every image has, and each BINARY's shared libraries.
stage_rootfs() {
  local dir=$1 lib; shift
  mkdir -p "$dir/etc/ssl/certs" "$dir/tmp" "$dir/home/nonroot"
  chmod 1777 "$dir/tmp"
  chown 65532:65532 "$dir/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$dir/etc/group"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
  for lib in $(ldd "$@" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
}

# pack NAME ROOTFS KEY CONFIG-ARGS...: an OCI layout of one layer, configured, saved as a tar.
pack() {
  local name=$1 rootfs=$2 key=$3; shift 3
  local out=$cache/$name-$key.tar work
  work=$(mktemp -d "$cache/.build.XXXXXX")
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:$tag"
  # unpack + repack rather than insert: umoci 0.4's insert leaves the layer's tar unterminated.
  umoci unpack --image "$work/oci:$tag" "$work/bundle" >/dev/null
  cp -a "$rootfs/." "$work/bundle/rootfs/"
  chmod 755 "$work/bundle/rootfs"
  umoci repack --image "$work/oci:$tag" "$work/bundle"
  umoci config --image "$work/oci:$tag" --history.created_by "e2e/images/build.sh $name" "$@"
  umoci gc --layout "$work/oci"
  tar -C "$work/oci" -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$work" "$rootfs"
  echo "$out"
}

mkdir -p "$cache"
case "$what" in
evaluator|operator)
  dockerfile=$repo/$what/Dockerfile
  stage=$(final_stage "$dockerfile")
  bins=$(printf '%s' "$stage" | sed -n 's#^COPY --from=build /\([^ ]*\) .*#\1#p')
  [ -n "$bins" ] || { log "$dockerfile: no COPY --from=build in its final stage"; exit 1; }
  log "release build of pbflags-evaluator and pbflags-operator"
  release_build
  key=$( { cat "$dockerfile" "$0"; for b in $bins; do cat "$CARGO_TARGET_DIR/release/$b"; done; echo "$tag"; } | sha256sum | cut -c1-16)
  out=$cache/pbflags-$what-$key.tar
  if [ -f "$out" ]; then echo "$out"; exit 0; fi
  rootfs=$(mktemp -d "$cache/.rootfs.XXXXXX")
  paths=()
  while read -r src dest; do
    mkdir -p "$rootfs$(dirname "$dest")"
    cp "$CARGO_TARGET_DIR/release/$src" "$rootfs$dest"
    paths+=("$rootfs$dest")
  done < <(printf '%s' "$stage" | sed -n 's#^COPY --from=build /\([^ ]*\) \(.*\)#\1 \2#p')
  stage_rootfs "$rootfs" "${paths[@]}"
  args=(--config.user "$(printf '%s' "$stage" | sed -n 's/^USER //p')")
  while read -r w; do args+=(--config.entrypoint "$w"); done < <(printf '%s\n' "$stage" | json_words ENTRYPOINT)
  while read -r w; do args+=(--config.cmd "$w"); done < <(printf '%s\n' "$stage" | json_words CMD)
  for p in $(printf '%s' "$stage" | sed -n 's/^EXPOSE //p'); do args+=(--config.exposedports "$p/tcp"); done
  log "packing pbflags-$what:$tag"
  pack "pbflags-$what" "$rootfs" "$key" "${args[@]}"
  ;;
nodetool)
  bin=$("$repo/e2e/controlplane/build.sh" --print-bin)/nodetool
  [ -x "$bin" ] || { log "$bin missing: run e2e/controlplane/build.sh"; exit 1; }
  key=$(cat "$bin" "$0" | sha256sum | cut -c1-16)
  out=$cache/nodetool-$key.tar
  if [ -f "$out" ]; then echo "$out"; exit 0; fi
  rootfs=$(mktemp -d "$cache/.rootfs.XXXXXX")
  cp "$bin" "$rootfs/nodetool"
  stage_rootfs "$rootfs" "$rootfs/nodetool"
  tag=1 pack nodetool "$rootfs" "$key" --config.user 65532:65532 --config.entrypoint /nodetool --config.cmd pause
  ;;
*)
  echo "usage: build.sh evaluator|operator|nodetool" >&2; exit 64 ;;
esac
