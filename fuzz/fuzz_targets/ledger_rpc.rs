//! Ledger RPC frames from clients and validators: never panic; accepted input re-encodes
//! identically (one encoding per value). The channel's handshake and sealed messages: a
//! validator reading a hello, a client reading a reply, either side opening a message; never
//! panic, and no input authenticates as the validator (a reply needs its key and the client's
//! fresh ephemeral key).
#![no_main]
use cairn_ledger::rpc::noise::{RpcIdentity, answer_hello, hello};
use cairn_ledger::rpc::{Request, Response};
use libfuzzer_sys::fuzz_target;

const CHAIN: [u8; 32] = [1; 32];

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        assert_eq!(r.encode(), data, "non-canonical request accepted");
    }
    if let Ok(r) = Response::decode(data) {
        assert_eq!(r.encode(), data, "non-canonical response accepted");
    }
    let id = RpcIdentity::from_seed([7; 32], CHAIN).unwrap();
    let _ = answer_hello(&id, data);
    let (pending, _) = hello(&CHAIN).unwrap();
    assert!(pending.finish(data, &id.public_key()).is_err(), "a forged reply authenticated");
    let (pending, msg2) = hello(&CHAIN).unwrap();
    let (reply, mut server) = answer_hello(&id, &msg2).unwrap();
    let mut client = pending.finish(&reply, &id.public_key()).unwrap();
    let _ = server.open_first(data);
    let _ = client.open(data);
});
