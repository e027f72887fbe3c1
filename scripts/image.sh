#!/usr/bin/env bash
# `make image`: the container image, an OCI archive in $DEB_OUT (build/mptcpize-py-image.tar), built
# from Debian's own parts only: mmdebstrap makes a Debian 13 (trixie) root with apt, and apt installs
# the package `make deb` built into it (mmdebstrap --include of the .deb: apt resolves its Depends from
# trixie); buildah turns that root into one layer with the daemon as entry point. No registry other than
# Debian's package archive is involved.
#
# Reproducible inputs: every timestamp is SOURCE_DATE_EPOCH (the last commit's time by default: the
# tar's files, the layer, the image's created date), apt's caches and logs are left out, and the
# archive's state is pinned by MIRROR (set it to a snapshot.debian.org URL to rebuild a past image):
# the same package set and the same .deb give the same files. What went in is written beside the
# archive (mptcpize-py-image.packages: every package and version; .inputs: the mirror, suite, the
# Release file's date, the .deb's sha256). The last line of output is the archive's path.
# Environment: MIRROR, SUITE (trixie), IMAGE_NAME (localhost/mptcpize-py:VERSION), DEB (skip make deb).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/config.sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
log() { printf 'image: %s\n' "$*" >&2; }
die() { printf 'image: error: %s\n' "$1" >&2; [ -z "${2:-}" ] || printf 'image: hint: %s\n' "$2" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "building the image needs root (mmdebstrap's root mode, buildah's storage)" \
    "sudo make image"
for tool in mmdebstrap buildah skopeo; do
    command -v "$tool" >/dev/null || die "$tool is missing" "bash scripts/setup.sh (or apt-get install $tool)"
done

SUITE=${SUITE:-trixie}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
version=$(dpkg-parsechangelog -S Version)
IMAGE_NAME=${IMAGE_NAME:-localhost/mptcpize-py:$version}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

deb=${DEB:-$(bash scripts/deb.sh | tail -n 1)}
[ -f "$deb" ] || die "no package at $deb"
deb=$(realpath "$deb")
mkdir -p "$DEB_OUT"
out=$(cd "$DEB_OUT" && pwd -P)
work=$(mktemp -d "$out/.image.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "mmdebstrap $SUITE from $MIRROR with $(basename "$deb") (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
# --variant=apt: essential packages + apt; then apt installs the .deb and what it depends on, no
# recommends (kernel headers come from the host when bcc compiles). (mmdebstrap 1.3.5's --include of a
# local .deb fails in root mode: the path is not inside the chroot, hence copy-in and apt-get there.)
# The customize hook drops what differs between two builds and nothing reads: apt's lists and caches,
# logs, the ld.so cache is regenerated deterministically by dpkg anyway.
mmdebstrap --quiet --variant=apt --mode=root --format=tar \
    --aptopt='APT::Install-Recommends "false"' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="copy-in $deb /tmp" \
    --customize-hook="chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/$(basename "$deb") >&2" \
    --customize-hook="rm -f \"\$1/tmp/$(basename "$deb")\"" \
    --customize-hook='chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" > "$1/.packages"' \
    --customize-hook="copy-out /.packages $work" \
    --customize-hook='rm -f "$1/.packages"; rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/* "$1"/var/cache/ldconfig/aux-cache' \
    --customize-hook='mkdir -p "$1/host" "$1/etc/mptcpize-py/policy.d"' \
    "$SUITE" "$work/rootfs.tar" "$MIRROR" >&2

log "buildah: one layer, entry point the daemon"
ctr=$(buildah from --quiet scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
buildah config \
    --entrypoint '["/usr/bin/mptcpize-py", "daemon"]' --cmd '[]' \
    --env PATH=/usr/sbin:/usr/bin:/sbin:/bin --env PYTHONDONTWRITEBYTECODE=1 \
    --stop-signal SIGTERM --workingdir / \
    --label org.opencontainers.image.title=mptcpize-py \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.base.name="debian:$SUITE (mmdebstrap)" \
    "$ctr"
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE_NAME" 2>/dev/null || true)
buildah commit --quiet --rm --timestamp "$SOURCE_DATE_EPOCH" "$ctr" "$IMAGE_NAME" >/dev/null
trap 'rm -rf "$work"' EXIT
# A rebuild takes the tag: the image it took it from would stay behind untagged (hundreds of MB each).
current=$(podman image inspect --format '{{.Id}}' "$IMAGE_NAME")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || log "kept the previous image ${previous:0:12} (still in use)"
fi

archive=$out/mptcpize-py-image.tar
rm -f "$archive"
skopeo copy --quiet "containers-storage:$IMAGE_NAME" "oci-archive:$archive:$version" >&2
mv "$work/.packages" "$out/mptcpize-py-image.packages"
{
    printf 'suite %s\nmirror %s\n' "$SUITE" "$MIRROR"
    printf 'release-date %s\n' "$(curl -fsS "$MIRROR/dists/$SUITE/InRelease" 2>/dev/null | sed -n 's/^Date: //p' | head -n 1)"
    printf 'deb %s %s\n' "$(basename "$deb")" "$(sha256sum < "$deb" | cut -d' ' -f1)"
    printf 'source-date-epoch %s\n' "$SOURCE_DATE_EPOCH"
} > "$out/mptcpize-py-image.inputs"
log "$IMAGE_NAME: $(podman image inspect --format '{{.Size}}' "$IMAGE_NAME" | numfmt --to=si)B unpacked, archive $(du -h "$archive" | cut -f1)"
echo "$archive"
