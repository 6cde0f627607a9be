//! Garbage input (random bytes and mangled requests) never kills the server.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use cairn_node::api::ROUTES;
use cairn_node::client::Client;

use crate::TOKEN;
use crate::harness::{bearer, concrete, request, start};

/// xorshift64*: a tiny seeded generator, so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

#[test]
fn garbage_never_kills_the_server() {
    let s = start();
    let conv = Client::new(&s.url(""), TOKEN, Path::new("/x")).create_conversation(&["@bob".into()]).unwrap();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let methods =
        ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "G\0T", "é"];
    let bearer = bearer();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        let raw: Vec<u8> = match rng.below(4) {
            0 => {
                let n = rng.below(2048);
                rng.bytes(n)
            }
            _ => {
                let method = rng.pick(&methods);
                let mut path = concrete(ROUTES[rng.below(ROUTES.len())].1)
                    .replace("00000000", if rng.below(2) == 0 { &conv.id } else { "zz%zz" });
                match rng.below(5) {
                    0 => {
                        path.push_str(&String::from_utf8_lossy(&rng.bytes(8)).replace(['\r', '\n', ' '], ""))
                    }
                    1 => path.push_str("?after=-1&limit=99999999999999999999999&wait_ms=50"),
                    2 => path = format!("/{}", hex(&rng.bytes(6))),
                    _ => {}
                }
                let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
                if rng.below(3) > 0 {
                    head.push_str(&format!("Authorization: {bearer}\r\n"));
                }
                let body: Vec<u8> = match rng.below(5) {
                    0 => {
                        let n = rng.below(4096);
                        rng.bytes(n)
                    }
                    1 => br#"{"members":["@a"],"text":"t","name":"n","home":"/tmp/x","passphrase":"p"}"#
                        .to_vec(),
                    2 => br#"{"members":[1,2,{}]"#.to_vec(),
                    3 => vec![b'['; 3000],
                    _ => Vec::new(),
                };
                if rng.below(2) == 0 {
                    head.push_str("Content-Type: application/json\r\n");
                }
                match rng.below(6) {
                    0 => head.push_str(&format!("Content-Length: {}\r\n", rng.next())),
                    1 => head.push_str("Transfer-Encoding: chunked\r\n"),
                    2 => head.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
                    _ => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
                }
                if rng.below(8) == 0 {
                    head.push_str(&format!("X-Junk: {}\r\n", hex(&rng.bytes(200))));
                }
                head.push_str("\r\n");
                let mut raw = head.into_bytes();
                raw.extend(body);
                raw
            }
        };
        let mut conn = TcpStream::connect(s.addr).unwrap_or_else(|e| panic!("request {i}: connect: {e}"));
        conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = conn.write_all(&raw);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut answer = [0u8; 64];
        let n = conn.read(&mut answer).unwrap_or(0);
        let line = String::from_utf8_lossy(&answer[..n]);
        let status = line.split(' ').nth(1).unwrap_or("none").to_string();
        *statuses.entry(status).or_default() += 1;
    }
    let (status, text) = request(&s, "GET", "/health", None, None);
    assert_eq!((status, text.as_str()), (200, r#"{"status":"ok"}"#));
    assert!(!s.task.is_finished(), "the server is still serving");
    assert!(statuses.len() > 3, "the garbage reached several kinds of answer: {statuses:?}");
    // And a real client still works.
    let st = Client::new(&s.url(""), TOKEN, Path::new("/x")).status().unwrap();
    assert_eq!(st.peers, 3);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
