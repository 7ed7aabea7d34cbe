#!/usr/bin/env bash
# Fetch the JVM libraries Spark needs (conf/jars.pom.xml) into the jar cache, once, and verify them.
#
# The cache lives outside the clone (default ~/.cache/lakehouse/jars; LAKEHOUSE_CACHE overrides the
# parent directory) so that every fresh clone and CI run reuses it and later runs need no network.
# A jar already in the cache with the right checksum is never fetched again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${LAKEHOUSE_CACHE:-$HOME/.cache/lakehouse}
jars="$cache/jars"
sums="$here/conf/jars.sha256"
mkdir -p "$jars"

verify() {
  (cd "$jars" && sha256sum --quiet --check "$sums") >/dev/null 2>&1
}

if verify; then
  echo "jars: cached and verified in $jars"
  exit 0
fi

if ! command -v mvn >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "jars: installing Maven (Debian package) to resolve the jars"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null
  else
    echo "jars: Maven (mvn) is needed once to fetch the jars: install it (apt-get install maven)" >&2
    exit 1
  fi
fi

echo "jars: fetching into $jars (the AWS SDK bundle is about 690 MB; this happens once)"
tmp=$(mktemp -d "$jars/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# --strict-checksums: Maven refuses an artifact whose published checksum does not match.
if ! mvn -B -q -Dstyle.color=never --strict-checksums -f "$here/conf/jars.pom.xml" \
  org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp/maven.log" 2>&1; then
  cat "$tmp/maven.log" >&2
  echo "jars: Maven could not fetch the jars (above); nothing was put in the cache" >&2
  exit 1
fi
(cd "$tmp" && sha256sum --quiet --check "$sums") || {
  echo "jars: checksum mismatch against conf/jars.sha256; nothing was put in the cache" >&2
  exit 1
}
mv -f "$tmp"/*.jar "$jars"/
verify
echo "jars: fetched and verified in $jars"
