// Echo / help bot policy: a bot member's node answers commands in a conversation.
//   "!help"      → Reply("commands: !help, !echo TEXT")
//   "!echo TEXT" → Reply(TEXT)
// Every other message is allowed; every group change is allowed; erasing another member's
// message is not (change 5: only its author may). Only the bot member's node posts the reply
// (every member computes the same verdict).
// on_message input: see moderation.ts. Output: 4 body:bytes (Reply) or nothing (Allow).
import { Reader, Writer, input, output, text, fail } from "./lib/cairn";

export const cairn_abi_v1: i32 = 1;

function startsWith(b: Uint8Array, p: Uint8Array): bool {
  if (b.length < p.length) return false;
  for (let i = 0; i < p.length; i++) if (b[i] != p[i]) return false;
  return true;
}

function reply(body: Uint8Array): void {
  output(new Writer(8 + body.length).u8(4).bytes(body).finish());
}

export function on_message(): void {
  const r = new Reader(input());
  if (r.u8() != 1) fail("not a message event");
  r.skip(r.u32() as i32); // config
  r.skip(32 + 8 + 32 + 32 + 8 + 8); // group, epoch, account, device, seq, ts
  const kind = r.u8();
  const body = r.bytes(16384);
  r.finish();
  if (kind != 1) return;
  if (startsWith(body, text("!help"))) {
    reply(text("commands: !help, !echo TEXT"));
  } else if (startsWith(body, text("!echo "))) {
    reply(body.slice(6));
  }
}

export function on_handshake(): void {
  const r = new Reader(input());
  if (r.u8() != 2) fail("not a handshake event");
  r.bytes(4096); // config
  r.skip(32 + 8 + 32); // group, epoch, proposer
  const change = r.u8();
  r.skip(32); // subject
  r.finish();
  if (change == 5) {
    output(new Writer(64).u8(1).bytes(text("only its author may erase a message")).finish());
  }
}
