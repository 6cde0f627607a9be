//! The WebSocket stream: authentication, events, a lagging listener.

use std::path::Path;
use std::time::Duration;

use cairn_node::backend::Backend as _;
use cairn_node::client::Client;
use cairn_node::model::StreamEvent;
use futures::StreamExt as _;

use crate::TOKEN;
use crate::harness::{bearer, start};

#[test]
fn a_send_appears_on_the_stream() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let s = start();
    let client = Client::new(&s.url(""), TOKEN, Path::new("/x"));
    let conv = client.create_conversation(&["@bob".into()]).unwrap();
    let ws_url = format!("ws://{}/v1/stream", s.addr);
    s.rt.block_on(async {
        // Without the token the upgrade is refused.
        let refused = tokio_tungstenite::connect_async(ws_url.as_str()).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected 401, got {other:?}"),
        }
        let mut req = ws_url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Authorization", bearer().parse().unwrap());
        let (mut ws, _) =
            tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
                .await
                .unwrap()
                .unwrap();
        let (id, conv_id, addr) = (conv.id.clone(), conv.id.clone(), s.addr);
        let sent = tokio::task::spawn_blocking(move || {
            Client::new(&format!("http://{addr}"), TOKEN, Path::new("/x")).send(&id, "hello stream").unwrap()
        })
        .await
        .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => break t,
                    Some(Ok(_)) => continue,
                    other => panic!("stream ended: {other:?}"),
                }
            }
        })
        .await
        .expect("no stream event within 10 s");
        let ev: StreamEvent = serde_json::from_str(frame.as_str()).unwrap();
        match ev {
            StreamEvent::Message(m) => {
                assert_eq!(m.id, sent.id);
                assert_eq!(m.text, "hello stream");
                assert_eq!(m.conversation, conv_id);
            }
            other => panic!("unexpected event {other:?}"),
        }
    });
}

#[test]
fn a_lagging_stream_client_skips_and_keeps_receiving() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let s = start();
    let client = Client::new(&s.url(""), TOKEN, Path::new("/x"));
    let conv = client.create_conversation(&["@bob".into()]).unwrap();
    let fake = s.fake.clone();
    let ws_url = format!("ws://{}/v1/stream", s.addr);
    s.rt.block_on(async {
        let mut req = ws_url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Authorization", bearer().parse().unwrap());
        let (mut ws, _) =
            tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
                .await
                .unwrap()
                .unwrap();
        // Far more events than the channel holds (64), published at once: the server-side
        // receiver lags; it must skip and go on, not close the stream.
        for i in 0..1000 {
            fake.send(conv.id.clone(), format!("m{i}"), None).await.unwrap();
        }
        let mut skipped = 0;
        let last = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()).unwrap() {
                        StreamEvent::Message(m) if m.text == "m999" => break m.seq,
                        StreamEvent::Lagged { skipped: n } => skipped += n,
                        _ => {}
                    },
                    Some(Ok(_)) => continue,
                    other => panic!("stream ended: {other:?}"),
                }
            }
        })
        .await
        .expect("the last event arrives");
        assert_eq!(last, 1000);
        assert!(skipped > 0, "the client is told how many events it missed, so it can re-read");
    });
}
