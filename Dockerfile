# syntax=docker/dockerfile:1
#
# One image for every Cairn component (as Longhorn and Mayastor ship theirs): metadata-node,
# storage-node, objectd, csi-block, csi-fs, the operator CLI `cairn` and the all-in-one
# `cairn-local`. No ENTRYPOINT: the Helm chart (charts/cairn) sets `command` per component.
#
# Build (BuildKit, the default builder of current Docker):
#   docker build -t ghcr.io/cairn-storage/cairn:0.1.0 .
#
# Runs as root on purpose: the CSI node plugins mount file systems, attach loop devices, open
# /dev/fuse and bind-mount into the kubelet's pod directories, which needs root in a privileged
# container (as every CSI node plugin does). The other components could run as any user; the
# chart decides their securityContext.

############################################################################################
# Builder: the same toolchain and system packages as scripts/setup.sh needs for a build.
############################################################################################
FROM rust:1.95-bookworm AS builder

# pkg-config, libclang-dev (bindgen for the rocksdb crate) and librocksdb-dev (linked from
# Debian instead of building RocksDB from source; see .cargo/config.toml and the README).
# protoc is not needed: proto/build.rs uses the vendored one (protoc-bin-vendored).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      pkg-config libclang-dev librocksdb-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The registry and target directories are BuildKit cache mounts (kept between builds, not in
# the image), so the binaries are copied out to /out inside the same step.
# ROCKSDB_LIB_DIR is found as scripts/setup.sh finds it, so the build works on any Debian
# architecture (.cargo/config.toml names the x86_64 directory; the environment wins over it).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    ROCKSDB_LIB_DIR="$(dirname "$(dpkg -L librocksdb-dev | grep -m1 'librocksdb\.so$')")"; \
    export ROCKSDB_LIB_DIR; \
    cargo build --release --locked --bins; \
    mkdir -p /out; \
    for b in metadata-node storage-node objectd csi-block csi-fs cairn cairn-local; do \
      install -m 0755 "target/release/$b" /out/; \
    done

############################################################################################
# Runtime
############################################################################################
FROM debian:bookworm-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="cairn" \
      org.opencontainers.image.description="Cairn: replicated block volumes (CSI), a shared POSIX filesystem (CSI, ReadWriteMany) and an S3-compatible object store from one pool of local disks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/cairn-storage/cairn" \
      org.opencontainers.image.url="https://github.com/cairn-storage/cairn" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Cairn developers"

# librocksdb7.8: the shared library metadata-node, storage-node and cairn-local link (it pulls
#   in libgflags, libsnappy, liblz4, libzstd, libbz2, zlib and libstdc++).
# What the CSI node plugins run: mount/umount/losetup (mount), blkid (util-linux), mkfs.ext4 and
#   resize2fs (e2fsprogs), mkfs.xfs and xfs_growfs (xfsprogs), fusermount3 (fuse3), modprobe
#   (kmod, for the loop and fuse modules).
# curl, jq, ca-certificates: the chart's init container for storage nodes reads the node's
#   topology labels from the Kubernetes API with them.
# /bin/sh, tar and gzip come with the base: the chart's metadata pods start through /bin/sh, and
#   `kubectl cp` needs tar (e.g. to copy a `cairn meta backup` file out of a pod).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      librocksdb7.8 \
      e2fsprogs xfsprogs util-linux mount fuse3 kmod \
      ca-certificates curl jq \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /out/ /usr/local/bin/

# No ENTRYPOINT or CMD on purpose: each workload names its binary (`metadata-node`,
# `storage-node`, `objectd`, `csi-block`, `csi-fs`); `cairn` is there for `kubectl exec`.
