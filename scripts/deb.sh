#!/usr/bin/env bash
# `make deb`: builds the Debian package mptcpize-py_VERSION_ARCH.deb (ARCH: the seccomp shim is C) with Debian's own tooling (debian/:
# debhelper, dh-python/pybuild) from this checkout's working tree, then lintian, which must report no
# errors. The build runs in a copy of the working tree under $DEB_OUT (build/), so the checkout itself
# is not touched; the .deb, .changes, .buildinfo, the native source package (.dsc, .tar.xz) and
# build.log land in $DEB_OUT. Missing build tools are installed with apt first (as root). The last
# line of output is the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/config.sh

log() { printf 'deb: %s\n' "$*" >&2; }
# Debian's tools with Debian's python3 (pybuild builds for the versions `py3versions` names): not a
# python3 or pip that comes first on the caller's PATH (a venv, pyenv).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
die() { printf 'deb: error: %s\n' "$1" >&2; [ -z "${2:-}" ] || printf 'deb: hint: %s\n' "$2" >&2; exit 1; }

missing=()
for pkg in $DEB_BUILD_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing build tools: ${missing[*]}" "sudo apt-get install ${missing[*]}"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && \
             DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi
dpkg-checkbuilddeps || die "debian/control needs more than DEB_BUILD_PACKAGES (scripts/config.sh)" \
    "add the packages named above to DEB_BUILD_PACKAGES"

version=$(dpkg-parsechangelog -S Version)
upstream=$(/usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
[ "$version" = "$upstream" ] || die "debian/changelog says $version, pyproject.toml $upstream" \
    "dch -v $upstream (a native package: the versions are the same)"

mkdir -p "$DEB_OUT"
out=$(cd "$DEB_OUT" && pwd -P)
src=$out/mptcpize-py-$version
rm -rf "$src"
mkdir "$src"
# The working tree as it is: tracked and new files (not ignored ones, not deleted ones), symbolic
# links as links (mptcpize_py/bpf -> ../bpf; setuptools copies what it points at into the wheel).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf - | tar -xf - -C "$src"
else
    tar --exclude="./$DEB_OUT" --exclude=./.git -cf - . | tar -xf - -C "$src"
fi

log "building mptcpize-py $version in $src"
rm -f "$out"/mptcpize-py_"$version"[._]*
(cd "$src" && dpkg-buildpackage -us -uc) > "$out/build.log" 2>&1 \
    || { tail -n 40 "$out/build.log" >&2; die "dpkg-buildpackage failed (log: $out/build.log)"; }
deb=$out/mptcpize-py_${version}_$(dpkg --print-architecture).deb
[ -f "$deb" ] || die "dpkg-buildpackage made no $deb (log: $out/build.log)"
rm -rf "$src"   # kept when the build fails, to look into

log "lintian (errors fail the build; the tags it reports follow)"
lintian --fail-on error --display-info "$out/mptcpize-py_${version}_"*.changes >&2 \
    || die "lintian reports errors" "see the E: lines above"
echo "$deb"
