//! Pure mapping between Matrix events and Cairn messages (sans-IO): naming of puppets and
//! portal aliases, validation of events pushed by the homeserver, what each event becomes on
//! the other side, and the loop guard (nothing from the bridge's own namespace is echoed).

use ruma::events::room::message::{MessageType, Relation, RoomMessageEventContent};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde::Deserialize;

use cairn_node::model::MessageView;

use crate::registration::PREFIX;

/// Longest text relayed either way, in bytes (longer text is cut at a character boundary).
pub const MAX_TEXT: usize = 16 * 1024;
/// Largest single event accepted from the homeserver, in bytes (Matrix caps events at 64 KiB).
pub const MAX_EVENT: usize = 64 * 1024;
/// Hex digits of the conversation id used in a portal alias.
pub const ALIAS_HEX: usize = 16;

/// Naming rules of one bridge on one homeserver.
#[derive(Debug, Clone)]
pub struct Names {
    server: String,
}

/// Whether `c` may appear in a Matrix user localpart (spec: `a-z 0-9 . _ = - /`).
fn localpart_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '=' | '-' | '/')
}

impl Names {
    /// Names on the homeserver `server_name`.
    pub fn new(server_name: &str) -> Names {
        Names { server: server_name.to_string() }
    }

    /// The homeserver's name.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The bridge bot (`@cairn_bot:server`).
    pub fn bot(&self) -> String {
        format!("@{PREFIX}bot:{}", self.server)
    }

    /// Whether `user_id` is in the bridge's own namespace (a puppet or the bot) on this
    /// homeserver: such events are never relayed (loop guard).
    pub fn is_own(&self, user_id: &str) -> bool {
        match user_id.strip_prefix('@').and_then(|r| r.split_once(':')) {
            Some((local, server)) => local.starts_with(PREFIX) && server == self.server,
            None => false,
        }
    }

    /// The puppet of a Cairn account: `@cairn_<handle>:server` when the handle is a valid
    /// localpart, else `@cairn_<account id>:server`.
    pub fn puppet(&self, account: &str, handle: Option<&str>) -> String {
        let by_handle = handle.map(|h| h.trim_start_matches('@').to_ascii_lowercase()).filter(|h| {
            !h.is_empty()
                && h.len() <= 64
                && !h.starts_with("cairn1")
                && h != "bot"
                && h.chars().all(|c| localpart_char(c) && c != '/')
        });
        let local = by_handle
            .unwrap_or_else(|| account.chars().filter(|c| localpart_char(*c)).take(100).collect::<String>());
        format!("@{PREFIX}{local}:{}", self.server)
    }

    /// The alias localpart of a conversation's portal (`cairn_<first 16 hex digits>`).
    pub fn alias_localpart(conv: &str) -> String {
        let short: String = conv.chars().filter(char::is_ascii_hexdigit).take(ALIAS_HEX).collect();
        format!("{PREFIX}{}", short.to_ascii_lowercase())
    }

    /// The full alias of a conversation's portal.
    pub fn alias(&self, conv: &str) -> String {
        format!("#{}:{}", Names::alias_localpart(conv), self.server)
    }

    /// The conversation-id prefix named by a portal alias on this server, if it is one.
    pub fn alias_conv_prefix(&self, alias: &str) -> Option<String> {
        let (local, server) = alias.strip_prefix('#')?.split_once(':')?;
        let hex = local.strip_prefix(PREFIX)?;
        (server == self.server
            && hex.len() == ALIAS_HEX
            && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| hex.to_string())
    }
}

/// Cuts `s` to at most [`MAX_TEXT`] bytes at a character boundary.
pub fn bound_text(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// An event pushed by the homeserver, validated: ids parse as Matrix ids, content is an object.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixEvent {
    /// Event type (`m.room.message`, …).
    pub kind: String,
    /// Room.
    pub room_id: OwnedRoomId,
    /// Sender.
    pub sender: OwnedUserId,
    /// Event id.
    pub event_id: OwnedEventId,
    /// State key (state events).
    pub state_key: Option<String>,
    /// Content (a JSON object).
    pub content: serde_json::Map<String, serde_json::Value>,
    /// Redacted event (`m.room.redaction`: top level before room version 11).
    pub redacts: Option<String>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    event_id: OwnedEventId,
    #[serde(default)]
    state_key: Option<String>,
    #[serde(default)]
    content: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    redacts: Option<String>,
}

/// Parses one event of a transaction; refuses oversized or malformed events.
pub fn parse_event(raw: &str) -> Result<MatrixEvent, String> {
    if raw.len() > MAX_EVENT {
        return Err(format!("event of {} bytes exceeds {MAX_EVENT}", raw.len()));
    }
    let r: RawEvent = serde_json::from_str(raw).map_err(|e| format!("malformed event: {e}"))?;
    if r.kind.is_empty() || r.kind.len() > 255 {
        return Err("event type empty or longer than 255 bytes".into());
    }
    Ok(MatrixEvent {
        kind: r.kind,
        room_id: r.room_id,
        sender: r.sender,
        event_id: r.event_id,
        state_key: r.state_key,
        content: r.content,
        redacts: r.redacts,
    })
}

/// What a Matrix event in a portal becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Relay this text into the Cairn conversation.
    Text(String),
    /// A message was redacted: erase its Cairn copy if the bridge relayed it, else post the text.
    Redact {
        /// The redacted event.
        redacts: OwnedEventId,
        /// Posted when there is no copy to erase.
        text: String,
    },
    /// Encryption was turned on in the portal: the bridge cannot follow; say so on both sides.
    EncryptionEnabled,
    /// Nothing to relay (the reason is logged).
    Ignore(&'static str),
}

fn body_of(m: &MessageType, sender: &str) -> String {
    match m {
        MessageType::Text(t) => t.body.clone(),
        MessageType::Notice(n) => n.body.clone(),
        MessageType::Emote(e) => format!("* {sender} {}", e.body),
        other => format!("[{}: {}]", other.msgtype(), other.body()),
    }
}

/// Maps a portal event to what the Cairn side gets. Events from the bridge's own namespace are
/// ignored (loop guard).
pub fn classify(ev: &MatrixEvent, names: &Names) -> Inbound {
    let sender = ev.sender.as_str();
    if names.is_own(sender) {
        return Inbound::Ignore("own namespace (loop guard)");
    }
    let content = serde_json::Value::Object(ev.content.clone());
    match ev.kind.as_str() {
        "m.room.message" => {
            let Ok(c) = serde_json::from_value::<RoomMessageEventContent>(content) else {
                return Inbound::Ignore("undecodable message content");
            };
            match &c.relates_to {
                Some(Relation::Replacement(r)) => Inbound::Text(bound_text(&format!(
                    "{sender} (Matrix, edited): {}",
                    body_of(&r.new_content.msgtype, sender)
                ))),
                _ => {
                    Inbound::Text(bound_text(&format!("{sender} (Matrix): {}", body_of(&c.msgtype, sender))))
                }
            }
        }
        "m.room.redaction" => {
            let target = ev.content.get("redacts").and_then(|r| r.as_str()).or(ev.redacts.as_deref());
            match target.map(OwnedEventId::try_from) {
                Some(Ok(redacts)) => {
                    Inbound::Redact { redacts, text: format!("{sender} (Matrix) deleted a message") }
                }
                _ => Inbound::Ignore("redaction without a valid target"),
            }
        }
        "m.room.encryption" => Inbound::EncryptionEnabled,
        "m.room.encrypted" => Inbound::Ignore("encrypted event (not supported)"),
        "m.room.member" => {
            let Some(target) = ev.state_key.as_deref() else {
                return Inbound::Ignore("member event without state_key");
            };
            if UserId::parse(target).is_err() {
                return Inbound::Ignore("member event with invalid state_key");
            }
            if names.is_own(target) {
                return Inbound::Ignore("own namespace (loop guard)");
            }
            let membership = ev.content.get("membership").and_then(|m| m.as_str()).unwrap_or("");
            let text = match membership {
                "join" => {
                    let name = ev.content.get("displayname").and_then(|d| d.as_str()).unwrap_or(target);
                    format!("{} ({target}) joined from Matrix", bound_name(name))
                }
                "leave" if target == sender => format!("{target} left on Matrix"),
                "leave" => format!("{target} was removed on Matrix by {sender}"),
                "ban" => format!("{target} was banned on Matrix by {sender}"),
                _ => return Inbound::Ignore("membership change not relayed"),
            };
            Inbound::Text(text)
        }
        _ => Inbound::Ignore("event type not relayed"),
    }
}

fn bound_name(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// What a Cairn message becomes on Matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromCairn {
    /// Post this text as the sender's puppet.
    Text(String),
    /// A member asked the bridge to invite a Matrix user (`!matrix invite @user:server`).
    Invite(OwnedUserId),
    /// Not relayed (the reason is logged).
    Skip(&'static str),
}

/// Maps a message of a bridged conversation. The bridge's own messages are skipped (they
/// came from Matrix: loop guard).
pub fn from_cairn(msg: &MessageView, bridge_account: &str, names: &Names) -> FromCairn {
    if msg.sender == bridge_account {
        return FromCairn::Skip("sent by the bridge (loop guard)");
    }
    if let Some(rest) = msg.text.strip_prefix("!matrix invite ") {
        return match UserId::parse(rest.trim()) {
            Ok(u) if !names.is_own(u.as_str()) => FromCairn::Invite(u),
            Ok(_) => FromCairn::Skip("invite of a bridged user"),
            Err(_) => FromCairn::Skip("invite of an invalid user id"),
        };
    }
    FromCairn::Text(bound_text(&msg.text))
}

/// A Cairn member as the bridge remembers it: account and handle.
pub type Member = (String, Option<String>);

/// Members who joined and left a conversation between two looks (the bridge account itself
/// excluded: it has no puppet).
pub fn member_changes(old: &[Member], now: &[Member], bridge_account: &str) -> (Vec<Member>, Vec<Member>) {
    let has = |list: &[Member], a: &str| list.iter().any(|(x, _)| x == a);
    let joined = now.iter().filter(|(a, _)| a != bridge_account && !has(old, a)).cloned().collect();
    let left = old.iter().filter(|(a, _)| a != bridge_account && !has(now, a)).cloned().collect();
    (joined, left)
}

/// The notice posted in every new portal (Matrix side).
pub fn portal_notice(conv: &str) -> String {
    format!(
        "This room is a bridge to the Cairn conversation {}…. Messages on this Matrix side are NOT \
         end-to-end encrypted: this homeserver (and the bridge) can read them. Encrypted Matrix \
         rooms are not supported: if encryption is turned on here, bridging stops.",
        &conv[..conv.len().min(ALIAS_HEX)]
    )
}

/// The message posted into a Cairn conversation when its portal is created.
pub fn cairn_notice(alias: &str) -> String {
    format!(
        "This conversation is bridged to the Matrix room {alias} by this bridge account. What is \
         said here is relayed there, where it is readable by the Matrix homeserver (not \
         end-to-end encrypted)."
    )
}

/// Posted on both sides when encryption is turned on in a portal.
pub const ENCRYPTION_REFUSED: &str = "Encryption was turned on in the Matrix room; the Cairn bridge cannot \
     read encrypted Matrix events, so messages from Matrix no longer reach Cairn. Turn encryption \
     off by creating a new room, or talk in Cairn directly.";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn names() -> Names {
        Names::new("hs.test")
    }

    fn ev(kind: &str, sender: &str, state_key: Option<&str>, content: serde_json::Value) -> MatrixEvent {
        let mut v = serde_json::json!({
            "type": kind, "room_id": "!r:hs.test", "sender": sender, "event_id": "$e1",
            "content": content, "origin_server_ts": 1
        });
        if let Some(k) = state_key {
            v["state_key"] = k.into();
        }
        parse_event(&v.to_string()).unwrap()
    }

    #[test]
    fn puppets_use_valid_handles_else_account_ids() {
        let n = names();
        assert_eq!(n.puppet("cairn1abc", Some("Alice")), "@cairn_alice:hs.test");
        assert_eq!(n.puppet("cairn1abc", Some("al ice")), "@cairn_cairn1abc:hs.test");
        assert_eq!(n.puppet("cairn1abc", Some("bot")), "@cairn_cairn1abc:hs.test");
        assert_eq!(n.puppet("cairn1abc", Some("cairn1zzz")), "@cairn_cairn1abc:hs.test");
        assert_eq!(n.puppet("cairn1abc", None), "@cairn_cairn1abc:hs.test");
        assert!(UserId::parse(n.puppet("cairn1abc", Some("a.b-c"))).is_ok());
    }

    #[test]
    fn own_namespace_is_recognised_only_on_this_server() {
        let n = names();
        assert!(n.is_own("@cairn_bot:hs.test"));
        assert!(n.is_own("@cairn_alice:hs.test"));
        assert!(!n.is_own("@cairn_alice:other.test"));
        assert!(!n.is_own("@alice:hs.test"));
        assert!(!n.is_own("garbage"));
    }

    #[test]
    fn aliases_round_trip_and_strangers_are_refused() {
        let n = names();
        let conv = "0123456789abcdef0123456789abcdef";
        let a = n.alias(conv);
        assert_eq!(a, "#cairn_0123456789abcdef:hs.test");
        assert_eq!(n.alias_conv_prefix(&a).as_deref(), Some("0123456789abcdef"));
        assert_eq!(n.alias_conv_prefix("#cairn_0123:hs.test"), None);
        assert_eq!(n.alias_conv_prefix("#cairn_0123456789abcdef:other"), None);
        assert_eq!(n.alias_conv_prefix("#other_0123456789abcdef:hs.test"), None);
        assert_eq!(n.alias_conv_prefix("#cairn_0123456789ABCDEF:hs.test"), None);
    }

    #[test]
    fn messages_edits_and_redactions_map_to_text() {
        let n = names();
        let m = ev(
            "m.room.message",
            "@bob:hs.test",
            None,
            serde_json::json!({"msgtype": "m.text", "body": "hi"}),
        );
        assert_eq!(classify(&m, &n), Inbound::Text("@bob:hs.test (Matrix): hi".into()));
        let e = ev(
            "m.room.message",
            "@bob:hs.test",
            None,
            serde_json::json!({"msgtype": "m.text", "body": "* hey",
                "m.new_content": {"msgtype": "m.text", "body": "hey"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$e0"}}),
        );
        assert_eq!(classify(&e, &n), Inbound::Text("@bob:hs.test (Matrix, edited): hey".into()));
        let r = ev("m.room.redaction", "@bob:hs.test", None, serde_json::json!({"redacts": "$e0"}));
        assert!(
            matches!(classify(&r, &n), Inbound::Redact { redacts, text } if redacts == "$e0" && text.contains("deleted a message"))
        );
        let mut old = r.clone();
        old.content.clear();
        old.redacts = Some("$e9".into());
        assert!(matches!(classify(&old, &n), Inbound::Redact { redacts, .. } if redacts == "$e9"));
        old.redacts = Some("not an event id".into());
        assert!(matches!(classify(&old, &n), Inbound::Ignore(_)));
        let enc = ev(
            "m.room.encryption",
            "@bob:hs.test",
            Some(""),
            serde_json::json!({"algorithm": "m.megolm.v1.aes-sha2"}),
        );
        assert_eq!(classify(&enc, &n), Inbound::EncryptionEnabled);
    }

    #[test]
    fn loop_guard_ignores_own_namespace() {
        let n = names();
        let m = ev(
            "m.room.message",
            "@cairn_alice:hs.test",
            None,
            serde_json::json!({"msgtype": "m.text", "body": "x"}),
        );
        assert!(matches!(classify(&m, &n), Inbound::Ignore(_)));
        let j = ev(
            "m.room.member",
            "@cairn_bot:hs.test",
            Some("@cairn_alice:hs.test"),
            serde_json::json!({"membership": "join"}),
        );
        assert!(matches!(classify(&j, &n), Inbound::Ignore(_)));
        let mut msg = MessageView {
            seq: 1,
            id: "00".into(),
            conversation: "c".into(),
            sender: "cairn1bridge".into(),
            device: "d".into(),
            handle: None,
            timestamp_ms: 0,
            text: "from matrix".into(),
            parents: vec![],
            after_gap: false,
            verdict: None,
            labels: Vec::new(),
        };
        assert!(matches!(from_cairn(&msg, "cairn1bridge", &n), FromCairn::Skip(_)));
        msg.sender = "cairn1alice".into();
        assert_eq!(from_cairn(&msg, "cairn1bridge", &n), FromCairn::Text("from matrix".into()));
        msg.text = "!matrix invite @bob:hs.test".into();
        assert!(matches!(from_cairn(&msg, "cairn1bridge", &n), FromCairn::Invite(u) if u == "@bob:hs.test"));
        msg.text = "!matrix invite @cairn_x:hs.test".into();
        assert!(matches!(from_cairn(&msg, "cairn1bridge", &n), FromCairn::Skip(_)));
    }

    #[test]
    fn cairn_member_changes_exclude_the_bridge() {
        let m = |a: &str| (a.to_string(), None);
        let (j, l) = member_changes(&[], &[m("me"), m("alice")], "me");
        assert_eq!((j, l), (vec![m("alice")], vec![]));
        let (j, l) = member_changes(&[m("alice"), m("bob")], &[m("bob"), m("carol"), m("me")], "me");
        assert_eq!((j, l), (vec![m("carol")], vec![m("alice")]));
        let (j, l) = member_changes(&[m("bob")], &[m("bob")], "me");
        assert!(j.is_empty() && l.is_empty());
    }

    #[test]
    fn memberships_map_to_join_leave_removal() {
        let n = names();
        let j = ev(
            "m.room.member",
            "@bob:hs.test",
            Some("@bob:hs.test"),
            serde_json::json!({"membership": "join", "displayname": "Bob"}),
        );
        assert_eq!(classify(&j, &n), Inbound::Text("Bob (@bob:hs.test) joined from Matrix".into()));
        let l = ev(
            "m.room.member",
            "@bob:hs.test",
            Some("@bob:hs.test"),
            serde_json::json!({"membership": "leave"}),
        );
        assert_eq!(classify(&l, &n), Inbound::Text("@bob:hs.test left on Matrix".into()));
        let k = ev(
            "m.room.member",
            "@mod:hs.test",
            Some("@bob:hs.test"),
            serde_json::json!({"membership": "leave"}),
        );
        assert!(matches!(classify(&k, &n), Inbound::Text(t) if t.contains("removed")));
        let i = ev(
            "m.room.member",
            "@mod:hs.test",
            Some("@bob:hs.test"),
            serde_json::json!({"membership": "invite"}),
        );
        assert!(matches!(classify(&i, &n), Inbound::Ignore(_)));
    }

    #[test]
    fn hostile_events_are_refused_or_bounded() {
        assert!(parse_event("{").is_err());
        assert!(parse_event(&"x".repeat(MAX_EVENT + 1)).is_err());
        let bad_room = serde_json::json!({"type": "m.room.message", "room_id": "nope", "sender": "@a:b", "event_id": "$e", "content": {}});
        assert!(parse_event(&bad_room.to_string()).is_err());
        let bad_sender = serde_json::json!({"type": "m.room.message", "room_id": "!r:b", "sender": "a", "event_id": "$e", "content": {}});
        assert!(parse_event(&bad_sender.to_string()).is_err());
        let long = "é".repeat(MAX_TEXT);
        let b = bound_text(&long);
        assert!(b.len() <= MAX_TEXT + "…".len());
        let n = names();
        let junk = ev("m.room.message", "@bob:hs.test", None, serde_json::json!({"msgtype": 5}));
        assert!(matches!(classify(&junk, &n), Inbound::Ignore(_)));
    }
}
