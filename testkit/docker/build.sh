#!/usr/bin/env bash
# Builds PostgreSQL images for pgrouter-testkit's Docker backend from Debian
# packages, with no container registry: mmdebstrap writes a minimal Debian
# root file system holding the server packages as a tar stream, and
# `docker import` turns it into an image. Nothing prebuilt is downloaded
# besides Debian's own packages.
#
#   testkit/docker/build.sh [MAJOR...]     # MAJOR: 15 (bookworm) or 17 (trixie); default: both
#
# Each image is tagged pgrouter/postgres:MAJOR-HASH, HASH covering this
# script, the entrypoint and the inputs (suite, packages, mirror): a build
# is skipped when that tag exists. pgrouter/postgres:MAJOR then names it.
# The tags are printed on standard output, one a line; progress goes to
# standard error. Several majors are built in parallel.
#
# Environment: PGROUTER_DEBIAN_MIRROR (default: the first Debian URI in
# /etc/apt/sources.list*, else http://deb.debian.org/debian). Needs root (or
# unprivileged user namespaces), a running Docker engine, and mmdebstrap
# (`apt-get install mmdebstrap`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=pgrouter/postgres

suite_of() {
    case "$1" in
        15) echo bookworm ;;
        17) echo trixie ;;
        *) echo "build.sh: no Debian suite known for PostgreSQL $1 (use 15 or 17)" >&2; return 1 ;;
    esac
}

mirror() {
    if [ -n "${PGROUTER_DEBIAN_MIRROR:-}" ]; then
        echo "$PGROUTER_DEBIAN_MIRROR"
        return
    fi
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
        grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

build_one() {
    local major=$1 suite mirror hash tag started
    suite=$(suite_of "$major")
    mirror=$(mirror)
    hash=$({ cat "$here/build.sh" "$here/entrypoint.sh"; echo "$major $suite $mirror"; } |
        sha256sum | cut -c1-16)
    tag="$repo:$major-$hash"
    if docker image inspect "$tag" >/dev/null 2>&1; then
        echo "PostgreSQL $major: $tag exists, not rebuilt" >&2
    else
        echo "PostgreSQL $major: building $tag from $suite ($mirror)" >&2
        started=$(date +%s)
        # Docs, man pages and translations are left out; the postgresql-common
        # default cluster is removed (the containers make their own).
        mmdebstrap --quiet --variant=minbase --include="postgresql-$major" \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --customize-hook='rm -rf "$1"/var/lib/postgresql/*/main "$1"/etc/postgresql/*/main' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            --customize-hook='mkdir -p "$1"/docker-entrypoint-initdb.d "$1"/var/lib/postgresql/data' \
            --customize-hook='chown postgres:postgres "$1"/var/lib/postgresql/data' \
            --customize-hook="upload $here/entrypoint.sh /usr/local/bin/docker-entrypoint.sh" \
            --customize-hook='chmod 755 "$1"/usr/local/bin/docker-entrypoint.sh' \
            "$suite" - "$mirror" |
            docker import \
                --change "ENV PATH=/usr/lib/postgresql/$major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
                --change 'ENV PGDATA=/var/lib/postgresql/data' \
                --change 'ENV LANG=C.UTF-8' \
                --change 'EXPOSE 5432' \
                --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
                --change 'CMD ["postgres"]' \
                --message "PostgreSQL $major from Debian $suite (pgrouter-testkit build.sh)" \
                - "$tag" >/dev/null
        echo "PostgreSQL $major: built $tag in $(($(date +%s) - started)) s" >&2
    fi
    docker tag "$tag" "$repo:$major"
    echo "$tag"
}

majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(15 17)
command -v mmdebstrap >/dev/null || { echo "build.sh: mmdebstrap not found (apt-get install mmdebstrap)" >&2; exit 1; }

pids=()
outs=()
for major in "${majors[@]}"; do
    suite_of "$major" >/dev/null
    out=$(mktemp)
    outs+=("$out")
    build_one "$major" >"$out" &
    pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || status=1
    cat "${outs[$i]}"
    rm -f "${outs[$i]}"
done
exit $status
