#!/usr/bin/env bash
# The vendored crates are crates.io releases plus the patches in patches/.
#
#   proxy/vendor/vendor.sh check            the vendored tree equals crates.io + patches (exit 1 if not)
#   proxy/vendor/vendor.sh update VERSION   re-vendor pingora-core at VERSION: fetch the release, apply
#                                           the patches (stops at the first one that does not apply)
#   proxy/vendor/vendor.sh update h2 VERSION   the same for another vendored crate (h2)
#
# Each patch applies with `patch -p1` inside the crate's directory; patches are
# named CRATE-NN-what.patch and applied in name order. Two files of the .crate
# are not kept: .cargo_vcs_info.json and Cargo.lock (unused for a path dependency).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
crates=(pingora-core h2)

version_of() { # the version of the vendored crate $1
  sed -n 's/^version = "\(.*\)"$/\1/p' "$here/$1/Cargo.toml" | head -1
}

# fetch CRATE VERSION DIR: DIR/CRATE-VERSION, pristine from crates.io (or cargo's cache)
fetch() {
  local crate=$1 version=$2 dir=$3 file
  file=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-$version.crate" 2>/dev/null | head -1 || true)
  if [ -z "$file" ]; then
    file="$dir/$crate-$version.crate"
    curl -sSfL "https://static.crates.io/crates/$crate/$crate-$version.crate" -o "$file"
  fi
  tar -xzf "$file" -C "$dir"
  rm -f "$dir/$crate-$version/.cargo_vcs_info.json" "$dir/$crate-$version/Cargo.lock"
}

# patched CRATE VERSION DIR: fetch, then apply the crate's patches in order
patched() {
  local crate=$1 version=$2 dir=$3 p
  fetch "$crate" "$version" "$dir"
  for p in "$here"/patches/"$crate"-*.patch; do
    [ -e "$p" ] || continue
    if ! patch -s -p1 -d "$dir/$crate-$version" --no-backup-if-mismatch -r - < "$p"; then
      echo "$(basename "$p") does not apply to $crate $version" >&2
      return 1
    fi
  done
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
case "${1:-check}" in
  check)
    status=0
    for crate in "${crates[@]}"; do
      version=$(version_of "$crate")
      patched "$crate" "$version" "$tmp"
      if diff -r "$tmp/$crate-$version" "$here/$crate" >"$tmp/$crate.diff"; then
        echo "$crate $version: crates.io + $(ls "$here"/patches/"$crate"-*.patch 2>/dev/null | wc -l) patches, identical"
      else
        echo "$crate $version: the vendored tree differs from crates.io + patches:" >&2
        cat "$tmp/$crate.diff" >&2
        status=1
      fi
    done
    exit $status
    ;;
  update)
    # update VERSION (pingora-core) or update CRATE VERSION
    crate=pingora-core
    if [ $# -ge 3 ]; then crate=$2; shift; fi
    version=${2:?usage: vendor.sh update [CRATE] VERSION}
    case " ${crates[*]} " in *" $crate "*) ;; *) echo "not vendored: $crate" >&2; exit 2 ;; esac
    patched "$crate" "$version" "$tmp"
    rm -rf "${here:?}/$crate"
    cp -a "$tmp/$crate-$version" "$here/$crate"
    echo "$crate: vendored $version with its patches"
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
