#!/usr/bin/env bash
# Seeds the fuzz corpora from the project's vectors and packager files.
# corpus/parse:         0x00 + ascii vector bytes, 0x01 + binary vector bytes, malformed ones,
#                       0x02 + a message in the jPOS dialect file the target loads
# corpus/frame_decoder: each framing byte + a len2 / len4-ascii framed vector
# corpus/spec_xml:      fixtures/packagers/*.xml
# corpus/api_body:      create-card bodies built on the cards of fixtures/traffic/accounts.json
# corpus/config:        deploy/vpan.example.toml, and it again with environment overrides
# corpus/journal:       small segments: raw bytes, and framed payloads with a zero tail
# corpus/recovery:      edits of a real data directory's records (see fuzz_targets/recovery.rs)
# corpus/tool_files:    the sample traffic in both layouts, the demo's with its cards, accounts
# corpus/owed_book:     a book of reversals owed: raw, framed records, debts vpan seals itself
# corpus/request_fields: the ascii and binary vectors, as corpus/parse has them
set -euo pipefail
cd "$(dirname "$0")"
root=..
mkdir -p corpus/parse corpus/frame_decoder corpus/spec_xml corpus/api_body corpus/config corpus/journal corpus/recovery corpus/tool_files corpus/owed_book corpus/request_fields

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
seed_vectors iso87ascii-where-layouts-differ.json 00
printf '02%s' "$(tr -d '[:space:]' < "$root/fixtures/packagers/tpdu-ebcdic-subfields.message.hex")" |
    xxd -r -p > corpus/parse/dialect-message
jq -r '.[] | "\(.name) \(.hex)"' "$root/fixtures/vectors/iso87ascii-malformed.json" |
    while read -r name hex; do printf '00%s' "$hex" | xxd -r -p > "corpus/parse/malformed-$name"; done
cp "$root"/fixtures/packagers/*.xml corpus/spec_xml/

# API bodies: one per fixture card, each with other optional keys, plus the usual mistakes.
i=0
for pan in $(jq -r '.[].pan' "$root/fixtures/traffic/accounts.json"); do
    i=$((i + 1))
    case $((i % 4)) in
    0) extra='"max_uses": 1, "valid_for_seconds": 86400, "merchant_lock": "first_use"' ;;
    1) extra='"per_transaction_limit": 2500, "valid_until": "2027-12-31T23:59:59Z", "merchant_lock": {"acceptor_id": "SHOP00000000001"}' ;;
    2) extra='"mcc_allow": ["5411", 5499], "mcc_block": [], "merchant_lock": "none"' ;;
    *) extra='"max_uses": 0, "amount_limit": -5' ;;
    esac
    printf '{"pan": "%s", "pan_expiry": "2912", "currency": "978", "amount_limit": 5000, %s}' \
        "$pan" "$extra" > "corpus/api_body/card-$i.json"
done
pan=$(jq -r '.[0].pan' "$root/fixtures/traffic/accounts.json")
printf '{"pan": "%s", "pan_expiry": "2912", "currency": 978, "amount_limit": 5000, "max_use": 1}' "$pan" > corpus/api_body/unknown-key.json
printf '{"pan": "%s1", "pan_expiry": "1312", "currency": "97", "amount_limit": "5000"}' "$pan" > corpus/api_body/bad-values.json
printf '{"pan": ' > corpus/api_body/truncated.json

# Config: the example file alone, then with overrides after a NUL (see fuzz_targets/config.rs).
cp "$root/deploy/vpan.example.toml" corpus/config/example.toml
{ cat "$root/deploy/vpan.example.toml"; printf '\0VPAN_NETWORK_MAX_CONNECTIONS=7\nVPAN_CARDS_VIRTUAL_RANGES=4970109, 4970108\nVPAN_ISSUER_SIGN_ON=false\nVPAN_API_TOKEN=t\n'; } > corpus/config/example-env.toml
printf '[network]\nlisten = "127.0.0.1:0"\n\0VPAN_CARDS_VIRTUAL_RANGES=["4970109"]\nVPAN_NETWORK_MAC=iso9797-1-alg3\n' > corpus/config/env-array.toml
printf '' > corpus/config/empty.toml

# Journal segments (see fuzz_targets/journal.rs for the mode byte): a raw torn record, a
# raw record with a valid length and CRC (payload "A"), framed payloads with zeros after.
printf '\x00\x05\x00\x00\x00\x01\x02' > corpus/journal/raw-torn
printf '\x00\x01\x00\x00\x00\x8b\x9e\xd9\xd3A' > corpus/journal/raw-one
printf '\x04\x01\x02\x03\xff\x02\x00\x00\x00\x00\x00\x00\x00\x01' > corpus/journal/framed

# Recovery (see fuzz_targets/recovery.rs for the layout): the directory as made, a snapshot
# header claiming a huge card count, a record cut short, a stray record in the journal.
printf '\x00\x00\x00\x00\x00' > corpus/recovery/untouched
printf '\x00\x00\x12\x00\x00\xff\xff\xff\xff\xff\xff\xff\x7f' > corpus/recovery/huge-count
printf '\x00\x01\x09\x00\x01' > corpus/recovery/card-cut
printf '\x01\x00\x00\x00\x02\x03\x01\x02\x03' > corpus/recovery/stray-record

# Tool files (see fuzz_targets/tool_files.rs): selector byte 0/1 traffic in ascii/binary,
# 2 accounts; the demo's traffic carries its cards file after a NUL. Card numbers are the
# fixtures' generated ones ($pan above), never written here.
{ printf '\x00'; cat "$root/fixtures/traffic/sample.jsonl"; } > corpus/tool_files/sample-ascii
{ printf '\x01'; cat "$root/fixtures/traffic/sample.jsonl"; } > corpus/tool_files/sample-binary
{ printf '\x00'; cat "$root/fixtures/demo/story.jsonl"; printf '\0'
  jq -c --arg pan "$pan" 'map({(.name): {vpan: $pan, expiry: "2612"}}) | add' "$root/fixtures/demo/cards.json"; } \
    > corpus/tool_files/story-bound
{ printf '\x02'; cat "$root/fixtures/traffic/accounts.json"; } > corpus/tool_files/accounts-json
printf '\x02pan,balance\n%s,1000\n# a comment\n' "$pan" > corpus/tool_files/accounts-csv

# The book of reversals owed (see fuzz_targets/owed_book.rs for the mode byte): a torn
# header; framed records (a debt paid, a STAN changed within the hour kept, one too old);
# two debts vpan seals itself, the first a reversal's first bytes.
printf '\x00\x09\x00\x00\x00\x01' > corpus/owed_book/raw-torn
{ printf '\x01\x02\x05\x00\x00\x00\x00\x00\x00\x00\xff'
  printf '\x03\xff\xd1\x49\x6b\x00\x00\x00\x00000123key-of-a-request\xff'
  printf '\x03\x00\x00\x00\x00\x00\x00\x00\x00000124old'; } > corpus/owed_book/framed
printf '\x020400\xf2\x38\x00\x01\x08\xe1\x80\x00\xff0401' > corpus/owed_book/sealed-debts

# The fields the switch reads: the vectors of both built-in layouts (selector 0 and 1).
cp corpus/parse/iso87* corpus/request_fields/

echo "seeded: $(ls corpus/parse | wc -l) parse, $(ls corpus/frame_decoder | wc -l) frame_decoder, $(ls corpus/spec_xml | wc -l) spec_xml, $(ls corpus/api_body | wc -l) api_body, $(ls corpus/config | wc -l) config, $(ls corpus/journal | wc -l) journal, $(ls corpus/recovery | wc -l) recovery, $(ls corpus/tool_files | wc -l) tool_files, $(ls corpus/owed_book | wc -l) owed_book, $(ls corpus/request_fields | wc -l) request_fields"
