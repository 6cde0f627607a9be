// Paid storage. A sender deposits funds for a store node (named by its Ed25519 identity key,
// the key behind its libp2p peer id) and the ledger account it is paid to, at a price per
// stored envelope. The payee redeems the signed store receipts the node issued: each pays the
// price once (a receipt, named by store key and envelope id, is never redeemed twice). The
// payer withdraws what is left.
//
// A receipt does not say whose envelope it covers: a deposit trusts its store node for up to
// its balance, as a prepaid voucher does.
//
// execute messages (first byte):
//   0 deposit  store_key:[32] payee:[32] price:u64                    (funds attached)
//   1 redeem   payer:[32] store_key:[32] receipt:[112]                (caller: the payee)
//        receipt = envelope id:[32] stored_at_ms:u64 expires_at_ms:u64 signature:[64]
//        signed  = "cairn/store-receipt/1" ‖ peer id bytes ‖ id ‖ stored_at ‖ expires_at
//   2 withdraw store_key:[32]                                          (caller: the payer)
// query:  0 payer:[32] store_key:[32] → deposit  payee:[32] price:u64 balance:u64
//         1 store_key:[32] id:[32]    → redeemed:u8
import {
  Reader, Writer, caller, emit, equal, fail, funds, get, input, output, set, text, transfer, verify,
} from "./lib/cairn";

export const cairn_abi_v1: i32 = 1;

function depositKey(payer: Uint8Array, store: Uint8Array): Uint8Array {
  return new Writer(65).u8(0x64).raw(payer).raw(store).finish();
}

function redeemedKey(store: Uint8Array, id: Uint8Array): Uint8Array {
  return new Writer(65).u8(0x72).raw(store).raw(id).finish();
}

/** The bytes of an Ed25519 libp2p peer id: identity multihash of the protobuf public key. */
function peerId(key: Uint8Array): Uint8Array {
  return new Writer(38).u8(0x00).u8(0x24).u8(0x08).u8(0x01).u8(0x12).u8(0x20).raw(key).finish();
}

class Deposit {
  payee: Uint8Array = new Uint8Array(32);
  price: u64 = 0;
  balance: u64 = 0;

  encode(): Uint8Array {
    return new Writer(48).raw(this.payee).u64(this.price).u64(this.balance).finish();
  }

  static load(k: Uint8Array): Deposit | null {
    const b = get(k);
    if (b == null) return null;
    const r = new Reader(b);
    const d = new Deposit();
    d.payee = r.fixed(32);
    d.price = r.u64();
    d.balance = r.u64();
    r.finish();
    return d;
  }
}

export function init(): void {}

export function execute(): void {
  const r = new Reader(input());
  const kind = r.u8();
  if (kind == 0) {
    const store = r.fixed(32);
    const payee = r.fixed(32);
    const price = r.u64();
    r.finish();
    if (price == 0) fail("the price per receipt must be at least 1");
    const k = depositKey(caller(), store);
    let d = Deposit.load(k);
    if (d == null) {
      d = new Deposit();
    } else if (!equal(d.payee, payee)) {
      fail("this deposit pays another account: withdraw it first");
    }
    d.payee = payee;
    d.price = price;
    const added = funds();
    if (d.balance + added < d.balance) fail("deposit overflow");
    d.balance += added;
    set(k, d.encode());
  } else if (kind == 1) {
    const payer = r.fixed(32);
    const store = r.fixed(32);
    const id = r.fixed(32);
    const storedAt = r.u64();
    const expiresAt = r.u64();
    const sig = r.fixed(64);
    r.finish();
    const k = depositKey(payer, store);
    const d = Deposit.load(k);
    if (d == null) fail("no deposit from this payer for this store node");
    if (!equal(caller(), d!.payee)) fail("only the store node's payee account redeems its receipts");
    const rk = redeemedKey(store, id);
    if (get(rk) != null) fail("this receipt was redeemed already");
    const signed = new Writer(128).raw(text("cairn/store-receipt/1")).raw(peerId(store)).raw(id)
      .u64(storedAt).u64(expiresAt).finish();
    if (!verify(store, signed, sig)) fail("the receipt is not signed by this store node");
    if (d!.balance < d!.price) fail("the deposit is used up");
    d!.balance -= d!.price;
    set(k, d!.encode());
    const one = new Uint8Array(1);
    one[0] = 1;
    set(rk, one);
    transfer(d!.payee, d!.price);
    emit(new Writer(48).raw(text("redeemed")).raw(id).finish());
  } else if (kind == 2) {
    const store = r.fixed(32);
    r.finish();
    const me = caller();
    const k = depositKey(me, store);
    const d = Deposit.load(k);
    if (d == null) fail("no deposit from this account for this store node");
    const amount = d!.balance;
    d!.balance = 0;
    set(k, d!.encode());
    if (amount > 0) transfer(me, amount);
  } else {
    fail("unknown paid-storage message");
  }
}

export function query(): void {
  const r = new Reader(input());
  const kind = r.u8();
  if (kind == 0) {
    const payer = r.fixed(32);
    const store = r.fixed(32);
    r.finish();
    const b = get(depositKey(payer, store));
    if (b == null) fail("no deposit from this payer for this store node");
    output(b!);
  } else {
    const store = r.fixed(32);
    const id = r.fixed(32);
    r.finish();
    const out = new Uint8Array(1);
    out[0] = get(redeemedKey(store, id)) == null ? 0 : 1;
    output(out);
  }
}
