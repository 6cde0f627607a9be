//! Balance, payments with typed errors, and delivery states of own messages, over HTTP.

use std::path::Path;

use cairn_node::api_history::DeliveryEntry;
use cairn_node::api_ledger::{BalanceView, PaymentView};
use cairn_node::client::Client;

use crate::TOKEN;
use crate::harness::{bearer, error_body, request, start};

const JSON: &str = "application/json";

#[test]
fn balance_and_a_payment_then_typed_refusals() {
    let s = start();
    let a = bearer();
    let auth = Some(a.as_str());
    let (status, text) = request(&s, "GET", "/v1/balance", auth, None);
    assert_eq!(status, 200, "{text}");
    let b: BalanceView = serde_json::from_str(&text).unwrap();
    assert_eq!((b.balance, b.registered), (100, true));

    let (status, text) =
        request(&s, "POST", "/v1/payments", auth, Some((JSON, br#"{"to":"@bob","amount":30}"#)));
    assert_eq!(status, 200, "{text}");
    let p: PaymentView = serde_json::from_str(&text).unwrap();
    assert_eq!((p.amount, p.balance), (30, 70));
    let (_, text) = request(&s, "GET", "/v1/balance", auth, None);
    assert_eq!(serde_json::from_str::<BalanceView>(&text).unwrap().balance, 70);

    // Each refusal has its status and stable code, and changes nothing.
    for (body, status_want, code) in [
        (r#"{"to":"@bob","amount":71}"#, 409, "insufficient_funds"),
        (r#"{"to":"@nobody","amount":1}"#, 404, "unknown_recipient"),
        (r#"{"to":"@bob","amount":0}"#, 400, "bad_amount"),
        (r#"{"to":"@me","amount":1}"#, 400, "self_payment"),
        (r#"{"to":"@bob","amount":-1}"#, 400, "bad_request"),
        (r#"{"to":"@bob","amount":1,"memo":"x"}"#, 400, "bad_request"),
        (r#"{"to":"@bob"}"#, 400, "bad_request"),
        (r#"{"to":"@bob","amount":18446744073709551616}"#, 400, "bad_request"),
    ] {
        let (status, text) = request(&s, "POST", "/v1/payments", auth, Some((JSON, body.as_bytes())));
        assert_eq!(status, status_want, "{body}: {text}");
        let e = error_body(&text);
        assert_eq!(e.code, code, "{body}: {text}");
        assert!(!e.error.is_empty());
    }
    let (_, text) = request(&s, "POST", "/v1/payments", auth, Some((JSON, br#"{"to":"@bob","amount":71}"#)));
    assert!(error_body(&text).error.contains("balance is 70"), "says what is there: {text}");
    let (_, text) = request(&s, "GET", "/v1/balance", auth, None);
    assert_eq!(serde_json::from_str::<BalanceView>(&text).unwrap().balance, 70, "refusals took nothing");

    // No token: refused before the backend is asked.
    let (status, _) = request(&s, "POST", "/v1/payments", None, Some((JSON, br#"{"to":"@bob","amount":1}"#)));
    assert_eq!(status, 401);
    let (_, text) = request(&s, "GET", "/v1/balance", auth, None);
    assert_eq!(serde_json::from_str::<BalanceView>(&text).unwrap().balance, 70);
}

#[test]
fn deliveries_of_own_messages_are_read_back() {
    let s = start();
    let a = bearer();
    let auth = Some(a.as_str());
    let client = Client::new(&s.url(""), TOKEN, Path::new("/x"));
    let conv = client.create_conversation(&["cairn1a".into()]).unwrap();
    let path = format!("/v1/conversations/{}/messages", conv.id);
    for t in ["one", "two"] {
        let body = format!(r#"{{"text":"{t}"}}"#);
        let (status, text) = request(&s, "POST", &path, auth, Some((JSON, body.as_bytes())));
        assert_eq!(status, 200, "{text}");
    }
    let (status, text) = request(&s, "GET", &format!("/v1/conversations/{}/deliveries", conv.id), auth, None);
    assert_eq!(status, 200, "{text}");
    let list: Vec<DeliveryEntry> = serde_json::from_str(&text).unwrap();
    assert_eq!(list.len(), 2, "{text}");
    let (status, text) = request(&s, "GET", "/v1/conversations/ffffffff/deliveries", auth, None);
    assert_eq!(status, 404, "{text}");
}
