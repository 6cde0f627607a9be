//! The OpenAPI document: exactly the routes, references resolve, schemas match the model.

use std::collections::BTreeSet;

use cairn_node::api::{self, ROUTES};
use cairn_node::model::{AccountView, ErrorBody, MessageView, SendResult, StatusView, VerifyView};

use crate::fake::delivery;

#[test]
fn openapi_documents_exactly_the_routes() {
    let doc: serde_json::Value = serde_json::from_str(api::OPENAPI).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(routed.len(), ROUTES.len(), "no duplicates in ROUTES");
    assert_eq!(documented, routed);
}

#[test]
fn openapi_references_resolve_and_schemas_match_the_model() {
    let doc: serde_json::Value = serde_json::from_str(api::OPENAPI).unwrap();
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
    }
    // The documented required fields are exactly the model's fields (serialize a value of
    // each model type and compare key sets).
    let status = StatusView {
        account: String::new(),
        device: String::new(),
        fingerprint: String::new(),
        handle: None,
        peer_id: String::new(),
        p2p: vec![],
        peers: 0,
        store_peers: 0,
        ledger_height: None,
        mailbox_backlog: 0,
        pending_sends: 0,
        conversations: 0,
        roles: vec![],
    };
    let samples: Vec<(&str, serde_json::Value)> = vec![
        ("StatusView", serde_json::to_value(&status).unwrap()),
        ("DeliveryView", serde_json::to_value(delivery()).unwrap()),
        ("SendResult", serde_json::to_value(SendResult { id: String::new(), delivery: delivery() }).unwrap()),
        (
            "VerifyView",
            serde_json::to_value(VerifyView {
                intact: true,
                envelopes: 0,
                signatures_verified: 0,
                anchors: 0,
                erased: 0,
                first_problem: None,
                problems: 0,
            })
            .unwrap(),
        ),
        (
            "AccountView",
            serde_json::to_value(AccountView {
                account: String::new(),
                handle: None,
                devices: vec![],
                height: 0,
                proof_verified: false,
            })
            .unwrap(),
        ),
        (
            "MessageView",
            serde_json::to_value(MessageView {
                seq: 0,
                id: String::new(),
                conversation: String::new(),
                sender: String::new(),
                device: String::new(),
                handle: None,
                timestamp_ms: 0,
                text: String::new(),
                parents: vec![],
                after_gap: false,
                verdict: None,
                labels: Vec::new(),
            })
            .unwrap(),
        ),
        ("ErrorBody", serde_json::to_value(ErrorBody { error: String::new(), code: String::new() }).unwrap()),
    ];
    for (name, value) in samples {
        let obj = value.as_object().unwrap();
        let schema = &doc["components"]["schemas"][name];
        let mut required: Vec<String> =
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        let mut props: Vec<String> = schema["properties"].as_object().unwrap().keys().cloned().collect();
        let mut fields: Vec<String> = obj.keys().cloned().collect();
        required.sort();
        props.sort();
        fields.sort();
        assert_eq!(required, fields, "{name} required");
        assert_eq!(props, fields, "{name} properties");
    }
}
