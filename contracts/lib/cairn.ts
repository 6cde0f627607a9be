// The `cairn` v1 host ABI for AssemblyScript contracts, and the bounded big-endian codec the
// shipped contracts use for their messages (cairn-proto's canonical encoding: fixed-size
// fields raw, integers big-endian, byte strings behind a u32 length).

@external("cairn", "input_len") declare function input_len(): i32;
@external("cairn", "input_read") declare function input_read(ptr: usize, len: i32): i32;
@external("cairn", "output_write") declare function output_write(ptr: usize, len: i32): void;
@external("cairn", "state_get") declare function state_get(key: usize, key_len: i32, buf: usize, cap: i32): i32;
@external("cairn", "state_set") declare function state_set(key: usize, key_len: i32, val: usize, val_len: i32): void;
@external("cairn", "state_del") declare function state_del(key: usize, key_len: i32): void;
@external("cairn", "blake3") declare function blake3(ptr: usize, len: i32, out: usize): void;
@external("cairn", "ed25519_verify") declare function ed25519_verify(key: usize, msg: usize, msg_len: i32, sig: usize): i32;
@external("cairn", "device_verify") declare function device_verify(account: usize, device: usize, msg: usize, msg_len: i32, sig: usize): i32;
@external("cairn", "abort") declare function host_abort(msg: usize, len: i32): void;
@external("cairn", "caller") declare function host_caller(out: usize): void;
@external("cairn", "self_address") declare function host_self(out: usize): void;
@external("cairn", "funds") declare function host_funds(): u64;
@external("cairn", "block_height") declare function host_block_height(): u64;
@external("cairn", "balance") declare function host_balance(account: usize): u64;
@external("cairn", "transfer") declare function host_transfer(to: usize, amount: u64): void;
@external("cairn", "emit") declare function host_emit(ptr: usize, len: i32): void;

/** Stops the call with `msg`; nothing of the call is kept (the fee is still paid). */
export function fail(msg: string): void {
  const b = String.UTF8.encode(msg);
  host_abort(changetype<usize>(b), b.byteLength);
  unreachable();
}

export function input(): Uint8Array {
  const n = input_len();
  const b = new Uint8Array(n);
  input_read(b.dataStart, n);
  return b;
}

export function output(b: Uint8Array): void {
  output_write(b.dataStart, b.length);
}

export function emit(b: Uint8Array): void {
  host_emit(b.dataStart, b.length);
}

export function get(key: Uint8Array): Uint8Array | null {
  const n = state_get(key.dataStart, key.length, 0, 0);
  if (n < 0) return null;
  const b = new Uint8Array(n);
  state_get(key.dataStart, key.length, b.dataStart, n);
  return b;
}

export function set(key: Uint8Array, value: Uint8Array): void {
  state_set(key.dataStart, key.length, value.dataStart, value.length);
}

export function del(key: Uint8Array): void {
  state_del(key.dataStart, key.length);
}

export function hash(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(32);
  blake3(b.dataStart, b.length, out.dataStart);
  return out;
}

export function verify(key: Uint8Array, msg: Uint8Array, sig: Uint8Array): bool {
  return ed25519_verify(key.dataStart, msg.dataStart, msg.length, sig.dataStart) == 1;
}

export function deviceVerify(account: Uint8Array, device: Uint8Array, msg: Uint8Array, sig: Uint8Array): bool {
  return device_verify(account.dataStart, device.dataStart, msg.dataStart, msg.length, sig.dataStart) == 1;
}

export function caller(): Uint8Array {
  const b = new Uint8Array(32);
  host_caller(b.dataStart);
  return b;
}

export function selfAddress(): Uint8Array {
  const b = new Uint8Array(32);
  host_self(b.dataStart);
  return b;
}

export function funds(): u64 {
  return host_funds();
}

export function blockHeight(): u64 {
  return host_block_height();
}

export function balance(account: Uint8Array): u64 {
  return host_balance(account.dataStart);
}

export function transfer(to: Uint8Array, amount: u64): void {
  host_transfer(to.dataStart, amount);
}

export function equal(a: Uint8Array, b: Uint8Array): bool {
  if (a.length != b.length) return false;
  for (let i = 0; i < a.length; i++) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

/** Reads a message, failing the call on anything out of bounds or left over. */
export class Reader {
  pos: i32 = 0;
  constructor(public buf: Uint8Array) {}

  u8(): u8 {
    if (this.pos + 1 > this.buf.length) fail("message truncated");
    const v = this.buf[this.pos];
    this.pos += 1;
    return v;
  }

  u64(): u64 {
    if (this.pos + 8 > this.buf.length) fail("message truncated");
    let v: u64 = 0;
    for (let i = 0; i < 8; i++) {
      v = (v << 8) | (this.buf[this.pos + i] as u64);
    }
    this.pos += 8;
    return v;
  }

  u32(): u32 {
    if (this.pos + 4 > this.buf.length) fail("message truncated");
    let v: u32 = 0;
    for (let i = 0; i < 4; i++) {
      v = (v << 8) | (this.buf[this.pos + i] as u32);
    }
    this.pos += 4;
    return v;
  }

  fixed(n: i32): Uint8Array {
    if (this.pos + n > this.buf.length) fail("message truncated");
    const v = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /** Skips `n` bytes (fields a contract does not use), failing if they are not there. */
  skip(n: i32): void {
    if (this.pos + n > this.buf.length) fail("message truncated");
    this.pos += n;
  }

  bytes(max: u32): Uint8Array {
    const n = this.u32();
    if (n > max) fail("byte string over its limit");
    return this.fixed(n as i32);
  }

  finish(): void {
    if (this.pos != this.buf.length) fail("trailing bytes in message");
  }
}

/** Builds a message or a state record. */
export class Writer {
  buf: Uint8Array;
  len: i32 = 0;
  constructor(cap: i32) {
    this.buf = new Uint8Array(cap);
  }

  private room(n: i32): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    if (cap < this.len + n) cap = this.len + n;
    const b = new Uint8Array(cap);
    b.set(this.buf);
    this.buf = b;
  }

  u8(v: u8): Writer {
    this.room(1);
    this.buf[this.len] = v;
    this.len += 1;
    return this;
  }

  u64(v: u64): Writer {
    this.room(8);
    for (let i = 0; i < 8; i++) {
      this.buf[this.len + i] = (v >> (((7 - i) * 8) as u64)) as u8;
    }
    this.len += 8;
    return this;
  }

  u32(v: u32): Writer {
    this.room(4);
    for (let i = 0; i < 4; i++) {
      this.buf[this.len + i] = (v >> (((3 - i) * 8) as u32)) as u8;
    }
    this.len += 4;
    return this;
  }

  raw(b: Uint8Array): Writer {
    this.room(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }

  bytes(b: Uint8Array): Writer {
    this.u32(b.length as u32);
    return this.raw(b);
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

export function text(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}
