// Moderation policy for a conversation (a policy contract: run by every member's node on what
// it receives, inside end-to-end encryption). Three rules, each off when its part of the
// configuration is empty:
//   roles:      only admins may add members, remove others, or change the policy (anyone may
//               leave, i.e. remove itself; key updates are free);
//   rate limit: at most `max` messages per `window_ms` of the sender's clock, per sender;
//   word filter: a text message containing a listed word (ASCII, case-insensitive) is held
//               (or denied, if `deny` is 1).
//
// configuration:
//   version:u8 (1) admins:u8 n ‖ n × account:[32] max:u32 window_ms:u64
//   words:u8 n ‖ n × bytes(<=32) deny:u8
// on_message input:
//   1 config:bytes group:[32] epoch:u64 account:[32] device:[32] seq:u64 ts:u64 type:u8 body:bytes
// on_handshake input:
//   2 config:bytes group:[32] epoch:u64 proposer:[32] change:u8 subject:[32]
//   change: 1 add, 2 remove, 3 change policy, 4 other, 5 erase a message of `subject`
// output: a verdict (0 allow, 1 deny reason:bytes, 3 hold, ...)
// state (per sender, kept by each member's node): 0x72 → window_start:u64 count:u32
import { Reader, Writer, equal, get, input, output, set, text, fail } from "./lib/cairn";

export const cairn_abi_v1: i32 = 1;

const TEXT: u8 = 1;
const WORD_MAX: u32 = 32;

class Config {
  admins: Array<Uint8Array> = [];
  max: u32 = 0;
  windowMs: u64 = 0;
  words: Array<Uint8Array> = [];
  deny: bool = false;
}

function config(b: Uint8Array): Config {
  const r = new Reader(b);
  const c = new Config();
  if (r.u8() != 1) fail("unknown configuration version");
  const n = r.u8();
  for (let i: u8 = 0; i < n; i++) c.admins.push(r.fixed(32));
  c.max = r.u32();
  c.windowMs = r.u64();
  const w = r.u8();
  for (let i: u8 = 0; i < w; i++) c.words.push(r.bytes(WORD_MAX));
  c.deny = r.u8() == 1;
  r.finish();
  return c;
}

function deny(reason: string): void {
  output(new Writer(64).u8(1).bytes(text(reason)).finish());
}

function lower(c: u8): u8 {
  return c >= 65 && c <= 90 ? c + 32 : c;
}

function contains(hay: Uint8Array, needle: Uint8Array): bool {
  const n = needle.length;
  if (n == 0 || n > hay.length) return false;
  for (let i = 0; i + n <= hay.length; i++) {
    let j = 0;
    while (j < n && lower(hay[i + j]) == lower(needle[j])) j++;
    if (j == n) return true;
  }
  return false;
}

export function on_message(): void {
  const r = new Reader(input());
  if (r.u8() != 1) fail("not a message event");
  const c = config(r.bytes(4096));
  r.skip(32 + 8 + 32 + 32 + 8); // group, epoch, account, device, seq
  const ts = r.u64();
  const kind = r.u8();
  const body = r.bytes(16384);
  r.finish();
  if (c.max > 0) {
    const key = new Uint8Array(1);
    key[0] = 0x72;
    const prev = get(key);
    let start = ts;
    let count: u32 = 1;
    if (prev != null) {
      const s = new Reader(prev);
      const ps = s.u64();
      const pc = s.u32();
      if (ts < ps + c.windowMs) {
        start = ps;
        count = pc < 0xffffffff ? pc + 1 : pc;
      }
    }
    set(key, new Writer(12).u64(start).u32(count).finish());
    if (count > c.max) {
      deny("rate limit: at most " + c.max.toString() + " messages per " + (c.windowMs / 1000).toString() + " s");
      return;
    }
  }
  if (kind == TEXT) {
    for (let i = 0; i < c.words.length; i++) {
      if (contains(body, c.words[i])) {
        if (c.deny) deny("filtered word");
        else output(new Writer(1).u8(3).finish());
        return;
      }
    }
  }
}

export function on_handshake(): void {
  const r = new Reader(input());
  if (r.u8() != 2) fail("not a handshake event");
  const c = config(r.bytes(4096));
  r.skip(32 + 8); // group, epoch
  const proposer = r.fixed(32);
  const change = r.u8();
  const subject = r.fixed(32);
  r.finish();
  if (change == 5) {
    // Erasing another member's message: admins only (an author's own erasure never asks).
    for (let i = 0; i < c.admins.length; i++) {
      if (equal(c.admins[i], proposer)) return;
    }
    deny("only its author or an admin may erase a message");
    return;
  }
  if (c.admins.length == 0 || change == 4) return;
  if (change == 2 && equal(subject, proposer)) return;
  for (let i = 0; i < c.admins.length; i++) {
    if (equal(c.admins[i], proposer)) return;
  }
  if (change == 1) deny("only an admin may add members");
  else if (change == 2) deny("only an admin may remove members");
  else deny("only an admin may change the policy");
}
