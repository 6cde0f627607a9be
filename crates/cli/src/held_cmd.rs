//! `cairn chat held <conv> [--release ID] [--json]`: what the conversation's policy kept out
//! of this device's history (held and waiting messages, denied ones, proposed removals), and
//! releasing a held message on this device.

use cairn_node::client::Client;
use cairn_node::model::HeldListView;

/// Runs `cairn chat held`.
pub(crate) fn run(client: &Client, conv: &str, release: Option<&str>, json: bool) -> anyhow::Result<()> {
    if let Some(id) = release {
        let m = client.release_held(conv, id)?;
        if json {
            println!("{}", serde_json::to_string(&m)?);
        } else {
            println!("released {} on this device: it shows in the history as [{}]", m.id, m.seq);
        }
        return Ok(());
    }
    let view = client.held(conv)?;
    if json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        print!("{}", render(&view));
    }
    Ok(())
}

/// The human-readable listing.
fn render(v: &HeldListView) -> String {
    let mut out = String::new();
    if v.held.is_empty() && v.denied.is_empty() && v.proposed_removals.is_empty() {
        out.push_str("nothing held: the policy showed every message it judged here\n");
        return out;
    }
    for h in &v.held {
        let state = if h.waiting { "waiting" } else { "held" };
        out.push_str(&format!("{state} {} from {}: {:?} ({})\n", h.id, h.sender, h.text, h.reason));
    }
    for d in &v.denied {
        out.push_str(&format!("denied {} from {}: {} (text not kept)\n", d.id, d.sender, d.reason));
    }
    for p in &v.proposed_removals {
        out.push_str(&format!(
            "proposed removal of {} (after message {} from {})\n",
            p.account, p.id, p.sender
        ));
    }
    if v.held.iter().any(|h| !h.waiting) {
        out.push_str("release one on this device with: cairn chat held <conv> --release ID\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_node::model::{DeniedView, HeldView};

    #[test]
    fn the_listing_names_each_kind() {
        assert!(render(&HeldListView::default()).starts_with("nothing held"));
        let v = HeldListView {
            held: vec![HeldView {
                id: "ab".into(),
                sender: "cairn1x".into(),
                device: "d".into(),
                timestamp_ms: 0,
                reason: "held by the conversation's policy".into(),
                waiting: false,
                text: "buy spam".into(),
            }],
            denied: vec![DeniedView {
                id: "cd".into(),
                sender: "cairn1y".into(),
                reason: "rate limit".into(),
            }],
            proposed_removals: vec![],
        };
        let s = render(&v);
        assert!(s.contains("held ab from cairn1x: \"buy spam\""), "{s}");
        assert!(s.contains("denied cd from cairn1y: rate limit"), "{s}");
        assert!(s.contains("--release ID"), "{s}");
    }
}
