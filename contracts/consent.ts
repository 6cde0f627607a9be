// Consent registry (MedRec-style). An account grants a named party access to a data pointer
// (an opaque reference, e.g. a hash or a URL of encrypted data: keep personal data off the
// ledger) until an expiry height, and may revoke it. A grant is one state entry under
//   key = 0x67 ‖ owner:[32] ‖ party:[32] ‖ BLAKE3(pointer):[32]
//   value = expires_height:u64 ‖ pointer
// so a light client proves access (the entry, with its expiry) or its absence (a
// non-existence proof of that key) against a certified state root.
//
// execute messages (first byte):
//   0 grant  party:[32] expires_height:u64 pointer:bytes(<=256)
//   1 revoke party:[32] pointer:bytes(<=256)
// query: owner:[32] party:[32] pointer:bytes(<=256)
//   → access:u8 (1 if granted and not expired at this height) expires_height:u64 (0 if none)
import { Reader, Writer, blockHeight, caller, del, fail, get, hash, input, output, set } from "./lib/cairn";

export const cairn_abi_v1: i32 = 1;

const POINTER_MAX: u32 = 256;

function grantKey(owner: Uint8Array, party: Uint8Array, pointer: Uint8Array): Uint8Array {
  return new Writer(97).u8(0x67).raw(owner).raw(party).raw(hash(pointer)).finish();
}

export function init(): void {}

export function execute(): void {
  const r = new Reader(input());
  const kind = r.u8();
  const party = r.fixed(32);
  if (kind == 0) {
    const expires = r.u64();
    const pointer = r.bytes(POINTER_MAX);
    r.finish();
    if (expires <= blockHeight()) fail("the expiry height has passed already");
    set(grantKey(caller(), party, pointer), new Writer(8 + pointer.length).u64(expires).raw(pointer).finish());
  } else if (kind == 1) {
    const pointer = r.bytes(POINTER_MAX);
    r.finish();
    const k = grantKey(caller(), party, pointer);
    if (get(k) == null) fail("no such grant to revoke");
    del(k);
  } else {
    fail("unknown consent message");
  }
}

export function query(): void {
  const r = new Reader(input());
  const owner = r.fixed(32);
  const party = r.fixed(32);
  const pointer = r.bytes(POINTER_MAX);
  r.finish();
  const b = get(grantKey(owner, party, pointer));
  let expires: u64 = 0;
  if (b != null) expires = new Reader(b).u64();
  const access: u8 = b != null && blockHeight() <= expires ? 1 : 0;
  output(new Writer(9).u8(access).u64(expires).finish());
}
