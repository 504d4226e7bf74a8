#!/usr/bin/env bash
# Seeds the fuzz corpora from the project's vectors and packager files.
# corpus/parse:         0x00 + ascii vector bytes, 0x01 + binary vector bytes, malformed ones
# corpus/frame_decoder: each framing byte + a len2 / len4-ascii framed vector
# corpus/spec_xml:      fixtures/packagers/*.xml
set -euo pipefail
cd "$(dirname "$0")"
root=..
mkdir -p corpus/parse corpus/frame_decoder corpus/spec_xml

seed_vectors() { # file prefix-byte-hex
    jq -r '.[] | "\(.name) \(.hex)"' "$root/fixtures/vectors/$1" | while read -r name hex; do
        printf '%s%s' "$2" "$hex" | xxd -r -p > "corpus/parse/$1-$name"
        len=$(( ${#hex} / 2 ))
        # len2 with no header (config byte 0x00), len4-ascii (0x02)
        { printf '00%04x%s' "$len" "$hex" | xxd -r -p; } > "corpus/frame_decoder/len2-$1-$name"
        { printf '02' | xxd -r -p; printf '%04d' "$len"; printf '%s' "$hex" | xxd -r -p; } \
            > "corpus/frame_decoder/len4-$1-$name"
    done
}
seed_vectors iso87ascii.json 00
seed_vectors iso87binary.json 01
jq -r '.[] | "\(.name) \(.hex)"' "$root/fixtures/vectors/iso87ascii-malformed.json" |
    while read -r name hex; do printf '00%s' "$hex" | xxd -r -p > "corpus/parse/malformed-$name"; done
cp "$root"/fixtures/packagers/*.xml corpus/spec_xml/
echo "seeded: $(ls corpus/parse | wc -l) parse, $(ls corpus/frame_decoder | wc -l) frame_decoder, $(ls corpus/spec_xml | wc -l) spec_xml"
