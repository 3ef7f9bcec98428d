#!/bin/sh
# Verifiable history, black-box: signing keys, a signed digest, a proof from
# `esrc prove` checked offline by `esrc check-proof` and by an independent
# verifier written here in Python from doc/verifiable-history.md (the Merkle
# part and the chain hash; the Ed25519 signature is left to esrc), proofs
# with any path element tampered fail in both, and `esrc verify --since`
# passes on a grown log but catches the deliberate rewrite of issue 12 (an
# event changed, its chain recomputed, its head row updated: plain
# `esrc verify` says ok), done on the lmdb files by `test_merkle rewrite`.
# Usage: merkle_test.sh ESRC TEST_MERKLE
set -u
ESRC=$1
REWRITE=$2
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
S="lmdb:$d/s?nosync"
e() { "$ESRC" --store "$S" "$@"; }

python3 -c 'import hashlib; hashlib.blake2b' || fail "python3 with hashlib.blake2b is needed"

e init >/dev/null || fail init
i=0
while [ $i -lt 40 ]; do
    e append "user/$((i % 7))" UserChanged "{\"n\":$i,\"name\":\"nämé $i\"}" >/dev/null || fail append
    i=$((i + 1))
done

# keys: 0600, never overwritten, show prints the same public key
pk=$("$ESRC" key create --out "$d/key") || fail "key create"
[ "$(stat -c %a "$d/key")" = 600 ] || fail "key file mode is $(stat -c %a "$d/key")"
[ "$("$ESRC" key show "$d/key")" = "$pk" ] || fail "key show differs"
"$ESRC" key create --out "$d/key" 2>/dev/null
[ $? -eq 2 ] || fail "key create over an existing file did not exit 2"
echo "ok: key $pk"

e digest --key "$d/key" >"$d/d1.json" || fail digest
grep -q '"size":40' "$d/d1.json" || fail "digest: $(cat "$d/d1.json")"
e prove user/3 4 --digest "$d/d1.json" >"$d/p.json" || fail prove
e read user/3 --from 4 --limit 1 --json >"$d/ev.json" || fail read
"$ESRC" check-proof "$d/p.json" --event "$d/ev.json" --pubkey "$pk" >"$d/out" || fail "check-proof: $(cat "$d/out")"
echo "$(cat "$d/out")"

cat >"$d/verify.py" <<'PY'
# An independent verifier of an `esrc prove` proof, from the documented format.
import base64, hashlib, json, struct, sys

def H(b):
    return hashlib.blake2b(b, digest_size=32).digest()

def field(ev, name):
    if name in ev:
        return ev[name].encode("utf-8")
    if name + "_b64" in ev:
        return base64.b64decode(ev[name + "_b64"])
    return b""

def chain_hash(prev, ev):
    key, typ, data, meta = (field(ev, n) for n in ("stream", "type", "data", "meta"))
    b = (b"es1" + bytes([len(key)]) + key + struct.pack(">Q", ev["seq"])
         + struct.pack(">q", ev["time_us"]) + bytes.fromhex(ev["id"])
         + bytes([len(typ)]) + typ + struct.pack(">I", len(data)) + data
         + struct.pack(">I", len(meta)) + meta)
    return H(prev + b)

def root_from_path(m, n, leaf, path):
    # RFC 9162 2.1.3.2, every element used, the length exactly what (m, n) ask
    if n == 1:
        if path:
            raise ValueError("path too long")
        return leaf
    if not path:
        raise ValueError("path too short")
    k = 1
    while k * 2 < n:
        k *= 2
    last = path[-1]
    if m < k:
        return H(b"\x01" + root_from_path(m, k, leaf, path[:-1]) + last)
    return H(b"\x01" + last + root_from_path(m - k, n - k, leaf, path[:-1]))

proof = json.load(open(sys.argv[1]))
ev = json.loads(open(sys.argv[2]).readline())
prev = bytes.fromhex(proof["prev_hash"]) if proof["prev_hash"] else bytes(32)
h = chain_hash(prev, ev)
if h.hex() != proof["event_hash"] or h.hex() != ev["hash"]:
    print("event hash differs"); sys.exit(1)
leaf = H(b"\x00" + h + struct.pack(">Q", proof["position"]))
d = proof["digest"]
if proof["tree_size"] != d["size"]:
    print("sizes differ"); sys.exit(1)
try:
    r = root_from_path(proof["leaf_index"], proof["tree_size"], leaf,
                       [bytes.fromhex(x) for x in proof["path"]])
except ValueError as err:
    print(err); sys.exit(1)
if r.hex() != d["root"]:
    print("root differs"); sys.exit(1)
print("python: proof verified, leaf %d of %d" % (proof["leaf_index"], proof["tree_size"]))
PY
python3 "$d/verify.py" "$d/p.json" "$d/ev.json" || fail "the independent verifier refused a good proof"

# every path element tampered, one at a time: both verifiers refuse
n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["path"]))' "$d/p.json")
[ "$n" -ge 3 ] || fail "expected a path of several hashes, got $n"
k=0
while [ $k -lt "$n" ]; do
    python3 -c '
import json, sys
p = json.load(open(sys.argv[1])); k = int(sys.argv[2])
h = bytearray.fromhex(p["path"][k]); h[16] ^= 1; p["path"][k] = h.hex()
json.dump(p, open(sys.argv[3], "w"))' "$d/p.json" $k "$d/bad.json"
    python3 "$d/verify.py" "$d/bad.json" "$d/ev.json" >/dev/null && fail "python accepted element $k tampered"
    "$ESRC" check-proof "$d/bad.json" --event "$d/ev.json" --pubkey "$pk" >/dev/null
    [ $? -eq 4 ] || fail "check-proof with element $k tampered did not exit 4"
    k=$((k + 1))
done
echo "ok: each of the $n path elements tampered is refused by both verifiers"

# a wrong key, a changed event, a wrong index
pk2=$("$ESRC" key create --out "$d/key2") || fail "key create 2"
"$ESRC" check-proof "$d/p.json" --event "$d/ev.json" --pubkey "$pk2" >/dev/null 2>&1
[ $? -eq 4 ] || fail "check-proof with another public key did not exit 4"
python3 -c '
import json, sys
ev = json.loads(open(sys.argv[1]).readline()); ev["data"] = ev["data"].replace("24", "25")
print(json.dumps(ev))' "$d/ev.json" >"$d/ev2.json"
cmp -s "$d/ev.json" "$d/ev2.json" && fail "the event was not changed"
"$ESRC" check-proof "$d/p.json" --event "$d/ev2.json" --pubkey "$pk" >/dev/null
[ $? -eq 4 ] || fail "check-proof of a changed event did not exit 4"
sed 's/"leaf_index":24/"leaf_index":23/' "$d/p.json" >"$d/bad.json"
"$ESRC" check-proof "$d/bad.json" --event "$d/ev.json" --pubkey "$pk" >/dev/null
[ $? -eq 4 ] || fail "check-proof with a wrong index did not exit 4"
echo "ok: another key, a changed event and a wrong index are refused"

# the log grows: it extends the digest
i=40
base=$(($(date +%s) * 1000000 + 5000000)) # ahead of the appends above, within the day allowed
while [ $i -lt 300 ]; do
    echo "{\"stream\":\"user/$((i % 7))\",\"seq\":$((i / 7 + 1)),\"time_us\":$((base + i)),\"id\":\"$(printf '%032x' $((i + 1)))\",\"type\":\"UserChanged\",\"data\":\"{\\\"n\\\":$i}\"}"
    i=$((i + 1))
done >"$d/more.jsonl"
e import "$d/more.jsonl" >/dev/null 2>"$d/err" || fail "import: $(cat "$d/err")"
e verify --since "$d/d1.json" --pubkey "$pk" >"$d/out" || fail "verify --since on a sound log: $(cat "$d/out")"
echo "$(cat "$d/out")"
e digest >"$d/d2.json" || fail digest2

# the deliberate rewrite: plain verify says ok, verify --since does not
"$REWRITE" rewrite "$d/s" user/3 2 || fail "rewriting the lmdb files"
e verify >"$d/out" || fail "the rewrite was expected to pass the chains: $(cat "$d/out")"
echo "plain verify after the rewrite: $(cat "$d/out")"
for dg in d1 d2; do
    e verify --since "$d/$dg.json" >"$d/out"
    rc=$?
    [ $rc -eq 4 ] || fail "verify --since $dg after the rewrite exited $rc: $(cat "$d/out")"
    echo "caught against $dg: $(cat "$d/out")"
done
e prove user/3 2 --digest "$d/d1.json" >/dev/null 2>"$d/err"
rc=$?
[ $rc -eq 4 ] || fail "prove of the rewritten event exited $rc: $(cat "$d/err")"
echo "ok: proving the rewritten event: $(cat "$d/err")"
echo "PASS"
