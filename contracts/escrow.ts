// Escrow / pay on delivery. A payer locks funds for a message id and a recipient account; the
// funds go to the recipient when one of the recipient's devices signs a delivery receipt for
// that message id, or back to the payer once the deadline height has passed. Each escrow
// closes once: a second release or refund is refused.
//
// execute messages (first byte):
//   0 open    id:[32] recipient:[32] deadline_height:u64          (funds attached: the amount)
//   1 release id:[32] device:[32] signature:[64]   signature over "cairn/delivery-receipt/v1" ‖ id
//   2 refund  id:[32]                                (after the deadline; pays the payer)
// query: id:[32] → record  status:u8 (0 open, 1 released, 2 refunded) payer:[32]
//                          recipient:[32] amount:u64 deadline_height:u64
import {
  Reader, Writer, blockHeight, caller, deviceVerify, emit, fail, funds, get, input, output,
  set, text, transfer,
} from "./lib/cairn";

export const cairn_abi_v1: i32 = 1;

const OPEN: u8 = 0;
const RELEASED: u8 = 1;
const REFUNDED: u8 = 2;

function key(id: Uint8Array): Uint8Array {
  return new Writer(33).u8(0x65).raw(id).finish();
}

class Escrow {
  status: u8 = 0;
  payer: Uint8Array = new Uint8Array(32);
  recipient: Uint8Array = new Uint8Array(32);
  amount: u64 = 0;
  deadline: u64 = 0;

  encode(): Uint8Array {
    return new Writer(81).u8(this.status).raw(this.payer).raw(this.recipient)
      .u64(this.amount).u64(this.deadline).finish();
  }

  static load(id: Uint8Array): Escrow {
    const b = get(key(id));
    if (b == null) fail("no escrow for this message id");
    const r = new Reader(b!);
    const e = new Escrow();
    e.status = r.u8();
    e.payer = r.fixed(32);
    e.recipient = r.fixed(32);
    e.amount = r.u64();
    e.deadline = r.u64();
    r.finish();
    return e;
  }
}

function closed(id: Uint8Array, e: Escrow, status: u8, to: Uint8Array): void {
  e.status = status;
  set(key(id), e.encode());
  transfer(to, e.amount);
  emit(new Writer(64).raw(text(status == RELEASED ? "released" : "refunded")).raw(id).finish());
}

export function init(): void {}

export function execute(): void {
  const r = new Reader(input());
  const kind = r.u8();
  const id = r.fixed(32);
  if (kind == 0) {
    const e = new Escrow();
    e.recipient = r.fixed(32);
    e.deadline = r.u64();
    r.finish();
    if (get(key(id)) != null) fail("an escrow for this message id exists: use another id");
    e.amount = funds();
    if (e.amount == 0) fail("attach the amount to escrow as funds");
    if (e.deadline <= blockHeight()) fail("the deadline height has passed already");
    e.status = OPEN;
    e.payer = caller();
    set(key(id), e.encode());
  } else if (kind == 1) {
    const device = r.fixed(32);
    const sig = r.fixed(64);
    r.finish();
    const e = Escrow.load(id);
    if (e.status != OPEN) fail("escrow is closed: already released or refunded");
    const receipt = new Writer(64).raw(text("cairn/delivery-receipt/v1")).raw(id).finish();
    if (!deviceVerify(e.recipient, device, receipt, sig)) {
      fail("not a delivery receipt signed by an active device of the recipient");
    }
    closed(id, e, RELEASED, e.recipient);
  } else if (kind == 2) {
    r.finish();
    const e = Escrow.load(id);
    if (e.status != OPEN) fail("escrow is closed: already released or refunded");
    if (blockHeight() <= e.deadline) fail("the deadline has not passed: wait for a later block");
    closed(id, e, REFUNDED, e.payer);
  } else {
    fail("unknown escrow message");
  }
}

export function query(): void {
  const r = new Reader(input());
  const id = r.fixed(32);
  r.finish();
  const b = get(key(id));
  if (b == null) fail("no escrow for this message id");
  output(b!);
}
