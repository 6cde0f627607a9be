//! Client commands: talk to the node running for `--home` through its local API
//! (`DIR/run/node.json` + `DIR/api.token`, see [`cairn_node::client`]).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use cairn_node::client::{Client, ClientError};
use cairn_node::model::{
    ConversationView, DeliveryState, DeliveryView, DeviceAddRequest, MemberView, MessageView, StatusView,
    TailQuery,
};
use clap::Subcommand;

/// Long-poll wait of `tail --follow`, in milliseconds.
const FOLLOW_WAIT_MS: u64 = 25_000;
/// Page size of `tail`.
const PAGE: usize = 500;

/// Commands that need a running node (flattened into the top-level command list).
#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Show the running node's status: peers, ledger height, mailbox backlog, pending sends.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Conversations: create, list, show, add or remove members, leave.
    #[command(subcommand)]
    Chat(ChatCommand),
    /// Send a text message; prints the message id, then its delivery status (sent, stored on k
    /// nodes, delivered to n of m members) once every member has it or `--wait` has passed.
    Send {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
        /// The text.
        text: String,
        /// Seconds to wait for delivery receipts before printing the status (0: print at once).
        #[arg(long, default_value_t = 10)]
        wait: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a conversation's messages (oldest first).
    Tail {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
        /// Keep waiting for new messages (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
        /// One JSON message per line.
        #[arg(long)]
        json: bool,
        /// Only messages after this sequence number.
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
    },
    /// Erase one of your messages everywhere: every member deletes it and the store nodes drop
    /// its ciphertext; its id and hash links stay, so `verify` still passes (and counts it).
    Erase {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
        /// Message id (64 hex digits, as `cairn tail` shows).
        message: String,
    },
    /// Check every signature, parent link and ledger anchor of a conversation's local history;
    /// exit status 0 only if it is intact.
    Verify {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
    },
    /// Handles on the ledger.
    #[command(subcommand)]
    Handle(HandleCommand),
    /// This account's devices: list, add, revoke.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// This account as a whole.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Invitations from accounts you have not accepted: list them (no argument), accept one
    /// (joins; that account's later invitations join at once) or decline one.
    Requests {
        #[command(subcommand)]
        action: Option<RequestsCommand>,
        /// Print JSON instead of text (listing).
        #[arg(long)]
        json: bool,
    },
}

/// `cairn requests …`.
#[derive(Debug, Subcommand)]
pub(crate) enum RequestsCommand {
    /// Join the conversation of a request.
    Accept {
        /// Request id (or a unique prefix of at least 8 hex digits).
        id: String,
    },
    /// Decline a request (a re-delivered invitation for it is ignored).
    Decline {
        /// Request id (or a unique prefix of at least 8 hex digits).
        id: String,
    },
}

/// `cairn chat …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ChatCommand {
    /// Create a conversation with these members; prints its id on the first line.
    New {
        /// Account ids (`cairn1…`) or handles (`@name`).
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// List this device's conversations.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one conversation: members, devices, epoch.
    Show {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add members to a conversation.
    Add {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
        /// Account ids (`cairn1…`) or handles (`@name`).
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove a member (all of its devices) from a conversation.
    Remove {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
        /// Account id (`cairn1…`) or handle (`@name`).
        member: String,
    },
    /// Leave a conversation.
    Leave {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
    },
    /// Forget a conversation you left: its keys are destroyed, so no copy of this device's
    /// database (earlier ones included) can be read any more; its messages go too.
    Forget {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
    },
    /// List what the conversation's policy kept out of this device's history: held messages
    /// (and ones waiting for an earlier message of their sender), denied ones (text not kept)
    /// and proposed removals; --release ID shows a held message on this device only.
    Held {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
        /// Show this held message (id) in this device's history.
        #[arg(long, value_name = "ID")]
        release: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the conversation's policy contract, or pin one with --set (a commit: every member
    /// switches at the same epoch; with `moderation`, only its admins may add, remove or change
    /// the policy afterwards).
    Policy {
        /// Conversation id (or a unique prefix of at least 8 hex digits).
        conv: String,
        /// Pin `moderation`, `echo_bot`, or `none` (unpin).
        #[arg(long, value_name = "POLICY")]
        set: Option<String>,
        /// Moderation: an admin (account id or @handle); repeat for several.
        #[arg(long = "admin", value_name = "WHO")]
        admins: Vec<String>,
        /// Moderation: at most N messages per sender per --window seconds.
        #[arg(long, value_name = "N", default_value_t = 0)]
        rate: u32,
        /// Moderation: the rate limit's window, seconds.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        window: u64,
        /// Moderation: a filtered word; repeat for several.
        #[arg(long = "word", value_name = "WORD")]
        words: Vec<String>,
        /// Moderation: deny filtered messages instead of holding them.
        #[arg(long)]
        deny_filtered: bool,
    },
}

/// `cairn account …`.
#[derive(Debug, Subcommand)]
pub(crate) enum AccountCommand {
    /// Forget this account: leave and forget every conversation (its keys are destroyed on
    /// this device), release the handle and revoke every device on the ledger. Cannot be
    /// undone; run it on the device that holds the account key.
    Forget {
        /// Confirm (required: nothing happens without it).
        #[arg(long)]
        yes: bool,
    },
}

/// `cairn handle …`.
#[derive(Debug, Subcommand)]
pub(crate) enum HandleCommand {
    /// Claim a handle for this account on the ledger.
    Claim {
        /// The handle, with or without `@`.
        name: String,
    },
}

/// `cairn device …`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeviceCommand {
    /// List this account's devices (from the ledger).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create a new device of this account in another data directory and register it.
    ///
    /// Its keystore passphrase is read from CAIRN_NEW_PASSPHRASE or prompted.
    Add {
        /// Data directory of the new device (must not hold an identity yet).
        #[arg(long, value_name = "DIR")]
        to: std::path::PathBuf,
    },
    /// Link a device on another machine: prints a one-time code for `cairn init --link CODE`
    /// there, then waits until that device is certified (or the code fails or expires).
    Link(crate::link_cmd::LinkArgs),
    /// Revoke a device of this account everywhere.
    Revoke {
        /// Device id (`cairndev1…`).
        device: String,
    },
}

/// Runs a client command against the node of `home`.
pub(crate) fn run(home: &Path, cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Status { json } => run_status(home, json),
        ClientCommand::Chat(c) => match c {
            ChatCommand::New { members } => run_chat_new(home, &members),
            ChatCommand::List { json } => run_chat_list(home, json),
            ChatCommand::Show { conv, json } => run_chat_show(home, &conv, json),
            ChatCommand::Add { conv, members } => run_chat_add(home, &conv, &members),
            ChatCommand::Remove { conv, member } => run_chat_remove(home, &conv, &member),
            ChatCommand::Leave { conv } => run_chat_leave(home, &conv),
            ChatCommand::Policy { conv, set, admins, rate, window, words, deny_filtered } => {
                let c = client(home)?;
                let view = match set {
                    None => c.policy(&conv)?,
                    Some(policy) => {
                        let req = cairn_node::model::PolicySetRequest {
                            policy,
                            admins,
                            max_messages: rate,
                            window_ms: window.saturating_mul(1000),
                            words,
                            deny_filtered,
                        };
                        c.set_policy(&conv, &req)?
                    }
                };
                println!("policy: {}", view.policy);
                if let (Some(h), Some(cfg)) = (view.code_hash, view.config) {
                    println!("code:   {h}\nconfig: {cfg}");
                }
                Ok(())
            }
            ChatCommand::Held { conv, release, json } => {
                crate::held_cmd::run(&client(home)?, &conv, release.as_deref(), json)
            }
            ChatCommand::Forget { conv } => {
                client(home)?.forget(&conv)?;
                println!("forgot {conv}: its keys, state and messages are gone from this device");
                Ok(())
            }
        },
        ClientCommand::Send { conv, text, wait, json } => run_send(home, &conv, &text, wait, json),
        ClientCommand::Tail { conv, follow, json, after } => run_tail(home, &conv, follow, json, after),
        ClientCommand::Verify { conv } => run_verify(home, &conv),
        ClientCommand::Erase { conv, message } => run_erase(home, &conv, &message),
        ClientCommand::Handle(HandleCommand::Claim { name }) => run_handle_claim(home, &name),
        ClientCommand::Device(d) => match d {
            DeviceCommand::List { json } => run_device_list(home, json),
            DeviceCommand::Add { to } => run_device_add(home, &to),
            DeviceCommand::Revoke { device } => run_device_revoke(home, &device),
            DeviceCommand::Link(args) => crate::link_cmd::link(home, args),
        },
        ClientCommand::Requests { action, json } => run_requests(home, action, json),
        ClientCommand::Account(AccountCommand::Forget { yes }) => run_account_forget(home, yes),
    }
}

/// `cairn account forget --yes`.
fn run_account_forget(home: &Path, yes: bool) -> anyhow::Result<()> {
    let c = client(home)?;
    let me = c.status()?.account;
    if !yes {
        bail!(
            "this leaves and forgets every conversation, releases your handle and revokes every device of {me}, for good; run `cairn account forget --yes` to do it"
        );
    }
    eprintln!("forgetting {me}: each step is a ledger transaction, this can take a minute");
    let done = c.forget_account(&me)?;
    println!(
        "left {} and forgot {} conversation(s); handle released: {}; {} device(s) revoked",
        done.left,
        done.forgotten,
        done.handle_released.map_or_else(|| "none held".to_string(), |h| format!("@{h}")),
        done.devices_revoked
    );
    println!(
        "the ledger keeps this account's public key, its balance and its revoked device keys (pseudonymous; see ARCHITECTURE.md). Stop the node and delete {} to remove this device's copy",
        home.display()
    );
    Ok(())
}

fn client(home: &Path) -> anyhow::Result<Client> {
    Ok(Client::for_home(home)?)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `cairn status [--json]`.
pub(crate) fn run_status(home: &Path, json: bool) -> anyhow::Result<()> {
    let s = client(home)?.status()?;
    if json {
        return print_json(&s);
    }
    print!("{}", status_text(&s));
    Ok(())
}

fn status_text(s: &StatusView) -> String {
    let ledger = match s.ledger_height {
        Some(h) => format!("height {h}"),
        None => "unreachable".to_string(),
    };
    let rows = [
        ("account", s.account.clone()),
        ("device", s.device.clone()),
        ("fingerprint", s.fingerprint.clone()),
        ("handle", s.handle.as_ref().map(|h| format!("@{h}")).unwrap_or_else(|| "(none)".into())),
        ("peer id", s.peer_id.clone()),
        ("listening", if s.p2p.is_empty() { "(nothing)".into() } else { s.p2p.join(", ") }),
        ("roles", s.roles.join(", ")),
        ("peers", format!("{} connected, {} store nodes known", s.peers, s.store_peers)),
        ("ledger", ledger),
        ("mailbox", format!("{} envelopes held for others", s.mailbox_backlog)),
        ("pending", format!("{} sends not yet stored on enough store nodes", s.pending_sends)),
        ("conversations", s.conversations.to_string()),
    ];
    rows.iter().map(|(k, v)| format!("{k:<14}{v}\n")).collect()
}

fn member_name(m: &MemberView) -> String {
    match &m.handle {
        Some(h) => format!("@{h} ({})", m.account),
        None => m.account.clone(),
    }
}

fn members_line(c: &ConversationView) -> String {
    c.members.iter().map(member_name).collect::<Vec<_>>().join(", ")
}

/// `cairn chat new <member>...`: the conversation id on line 1.
pub(crate) fn run_chat_new(home: &Path, members: &[String]) -> anyhow::Result<()> {
    let c = client(home)?.create_conversation(members)?;
    println!("{}", c.id);
    println!("members: {}", members_line(&c));
    Ok(())
}

/// `cairn chat list [--json]`.
pub(crate) fn run_chat_list(home: &Path, json: bool) -> anyhow::Result<()> {
    let convs = client(home)?.conversations()?;
    if json {
        return print_json(&convs);
    }
    if convs.is_empty() {
        println!("no conversations yet: start one with `cairn chat new <member>`");
    }
    for c in &convs {
        let left = if c.active { "" } else { "  (left)" };
        println!("{}  epoch {}  {} messages  {}{left}", c.id, c.epoch, c.messages, members_line(c));
    }
    Ok(())
}

/// `cairn chat show <conv> [--json]`.
pub(crate) fn run_chat_show(home: &Path, conv: &str, json: bool) -> anyhow::Result<()> {
    let c = client(home)?.conversation(conv)?;
    if json {
        return print_json(&c);
    }
    print!("{}", conversation_text(&c));
    Ok(())
}

fn conversation_text(c: &ConversationView) -> String {
    let mut out = format!(
        "conversation  {}\ntopic         {}\nepoch         {}\nstate         {}\nmessages      {}\nmembers       {}\n",
        c.id,
        c.topic,
        c.epoch,
        if c.active { "member" } else { "left" },
        c.messages,
        c.members.len()
    );
    for m in &c.members {
        out.push_str(&format!("  {}\n", member_name(m)));
        for d in &m.devices {
            out.push_str(&format!("    device {d}\n"));
        }
    }
    out
}

/// `cairn chat add <conv> <member>...`.
pub(crate) fn run_chat_add(home: &Path, conv: &str, members: &[String]) -> anyhow::Result<()> {
    let c = client(home)?.add_members(conv, members)?;
    println!("added to {} (epoch {}); members: {}", c.id, c.epoch, members_line(&c));
    Ok(())
}

/// `cairn chat remove <conv> <member>`.
pub(crate) fn run_chat_remove(home: &Path, conv: &str, member: &str) -> anyhow::Result<()> {
    let c = client(home)?.remove_member(conv, member)?;
    println!("removed {member} from {} (epoch {}); members: {}", c.id, c.epoch, members_line(&c));
    Ok(())
}

/// `cairn chat leave <conv>`.
pub(crate) fn run_chat_leave(home: &Path, conv: &str) -> anyhow::Result<()> {
    client(home)?.leave(conv)?;
    println!("left {conv}");
    Ok(())
}

/// The delivery status as the CLI prints it.
pub(crate) fn delivery_text(d: &DeliveryView) -> String {
    match d.state {
        DeliveryState::Delivered => format!("delivered to {} of {} members", d.delivered_to, d.members),
        DeliveryState::Stored if d.delivered_to > 0 => format!(
            "stored on {} nodes, delivered to {} of {} members",
            d.stored_on, d.delivered_to, d.members
        ),
        DeliveryState::Stored => format!("stored on {} nodes", d.stored_on),
        DeliveryState::Sent => "sent".to_string(),
    }
}

/// `cairn send <conv> <text>`: the envelope id on line 1, its status on line 2.
pub(crate) fn run_send(home: &Path, conv: &str, text: &str, wait_s: u64, json: bool) -> anyhow::Result<()> {
    let r = client(home)?.send_wait(conv, text, wait_s.saturating_mul(1000))?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{}", r.id);
        println!("{}", delivery_text(&r.delivery));
    }
    Ok(())
}

/// `cairn tail <conv> [--follow] [--json] [--after N]`.
pub(crate) fn run_tail(
    home: &Path,
    conv: &str,
    follow: bool,
    json: bool,
    after: Option<u64>,
) -> anyhow::Result<()> {
    let c = client(home)?;
    let mut cursor = after;
    let mut out = std::io::stdout().lock();
    // History first, page by page.
    loop {
        let page = c.messages(conv, &TailQuery { after: cursor, limit: Some(PAGE), wait_ms: None })?;
        let done = page.len() < PAGE;
        for m in &page {
            print_message(&mut out, m, json)?;
            cursor = Some(m.seq);
        }
        if done {
            break;
        }
    }
    if !follow {
        return Ok(());
    }
    loop {
        let q = TailQuery { after: cursor, limit: Some(PAGE), wait_ms: Some(FOLLOW_WAIT_MS) };
        match c.messages(conv, &q) {
            Ok(page) => {
                for m in &page {
                    print_message(&mut out, m, json)?;
                    cursor = Some(m.seq);
                }
            }
            // A timed-out or interrupted poll is retried; an absent node or an API error ends.
            Err(ClientError::Transport { detail, .. }) => {
                tracing::warn!("polling the node failed ({detail}); retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn print_message(out: &mut impl std::io::Write, m: &MessageView, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(m)?)?;
    } else {
        if m.after_gap {
            writeln!(out, "… (earlier messages missing here)")?;
        }
        let who = match &m.handle {
            Some(h) => format!("@{h}"),
            None => m.sender.clone(),
        };
        let labels = if m.labels.is_empty() { String::new() } else { format!("  [{}]", m.labels.join(", ")) };
        writeln!(out, "[{}] {} {who}: {}{labels}", m.seq, utc(m.timestamp_ms), m.text)?;
    }
    out.flush().context("writing to stdout")?;
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a millisecond timestamp.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `cairn verify <conv>`: Ok only if the history is intact.
pub(crate) fn run_verify(home: &Path, conv: &str) -> anyhow::Result<()> {
    let v = client(home)?.verify(conv)?;
    println!(
        "{} envelopes, {} signatures verified, {} ledger anchors checked, {} erased payloads",
        v.envelopes, v.signatures_verified, v.anchors, v.erased
    );
    if v.intact && v.problems == 0 {
        println!("intact");
        return Ok(());
    }
    let first = v.first_problem.unwrap_or_else(|| "(the node named none)".to_string());
    println!("NOT intact: {} problem(s); first: {first}", v.problems);
    bail!("the history of {conv} is not intact: {first}")
}

/// `cairn erase <conv> <message>`.
pub(crate) fn run_erase(home: &Path, conv: &str, message: &str) -> anyhow::Result<()> {
    let r = client(home)?.erase(conv, message)?;
    println!("erased {message} (redaction {} sent to the members; store nodes asked to drop it)", r.id);
    Ok(())
}

/// `cairn handle claim <name>`.
pub(crate) fn run_handle_claim(home: &Path, name: &str) -> anyhow::Result<()> {
    let tx = client(home)?.claim_handle(name)?;
    println!("claimed @{} (tx {}, finalized at height {})", name.trim_start_matches('@'), tx.tx, tx.height);
    Ok(())
}

/// `cairn device list [--json]`.
pub(crate) fn run_device_list(home: &Path, json: bool) -> anyhow::Result<()> {
    let devices = client(home)?.devices()?;
    if json {
        return print_json(&devices);
    }
    for d in &devices {
        println!("{}{}", d.device, if d.this_device { "  (this device)" } else { "" });
    }
    Ok(())
}

/// `cairn requests [accept|decline ID]`.
pub(crate) fn run_requests(home: &Path, action: Option<RequestsCommand>, json: bool) -> anyhow::Result<()> {
    let c = client(home)?;
    match action {
        None => {
            let reqs = c.requests()?;
            if json {
                return print_json(&reqs);
            }
            if reqs.is_empty() {
                println!("no invitation requests");
            }
            for r in &reqs {
                println!("{}  from {}  ({} member devices)", r.id, r.inviter, r.members);
            }
        }
        Some(RequestsCommand::Accept { id }) => {
            let v = c.accept_request(&id)?;
            println!("{}", v.id);
            println!("joined; later invitations from this account join at once");
        }
        Some(RequestsCommand::Decline { id }) => {
            c.decline_request(&id)?;
            println!("declined");
        }
    }
    Ok(())
}

/// `cairn device add --to DIR`: passphrase from CAIRN_NEW_PASSPHRASE or prompted.
pub(crate) fn run_device_add(home: &Path, to: &Path) -> anyhow::Result<()> {
    let c = client(home)?;
    // The node may run in another directory: give it an absolute path.
    let dir = std::path::absolute(to).with_context(|| format!("resolving {}", to.display()))?;
    let passphrase = new_passphrase()?;
    let d = c.add_device(&DeviceAddRequest { home: dir.display().to_string(), passphrase })?;
    println!("{}", d.device);
    println!(
        "created device {} in {}; start it with `cairn up --home {}` (its keystore holds its device key only: manage handles and devices from this device, which holds the account key)",
        d.device,
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn new_passphrase() -> anyhow::Result<String> {
    if let Some(p) = std::env::var_os("CAIRN_NEW_PASSPHRASE") {
        let p = p.into_string().map_err(|_| anyhow::anyhow!("CAIRN_NEW_PASSPHRASE is not valid UTF-8"))?;
        if p.is_empty() {
            bail!("CAIRN_NEW_PASSPHRASE is empty; choose a passphrase that protects the new device's key");
        }
        return Ok(p);
    }
    let p = rpassword::prompt_password("Passphrase for the new device's keystore: ")
        .context("no passphrase: set CAIRN_NEW_PASSPHRASE or run in a terminal to be prompted")?;
    let again = rpassword::prompt_password("Repeat passphrase: ")?;
    if again != p {
        bail!("the two passphrases differ; nothing was created, run `cairn device add` again");
    }
    if p.is_empty() {
        bail!("empty passphrase refused; choose one that protects the new device's key");
    }
    Ok(p)
}

/// `cairn device revoke <device>`.
pub(crate) fn run_device_revoke(home: &Path, device: &str) -> anyhow::Result<()> {
    let tx = client(home)?.revoke_device(device)?;
    println!("revoked {device} (tx {}, finalized at height {})", tx.tx, tx.height);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_texts() {
        let d = |state: DeliveryState| DeliveryView { state, stored_on: 2, delivered_to: 1, members: 3 };
        assert_eq!(delivery_text(&d(DeliveryState::Sent)), "sent");
        assert_eq!(
            delivery_text(&d(DeliveryState::Stored)),
            "stored on 2 nodes, delivered to 1 of 3 members"
        );
        let none_yet = DeliveryView { delivered_to: 0, ..d(DeliveryState::Stored) };
        assert_eq!(delivery_text(&none_yet), "stored on 2 nodes");
        assert_eq!(delivery_text(&d(DeliveryState::Delivered)), "delivered to 1 of 3 members");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_000_000_123), "2026-11-18 11:06:40");
    }

    #[test]
    fn commands_parse() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct T {
            #[command(subcommand)]
            c: ClientCommand,
        }
        let t =
            T::try_parse_from(["t", "tail", "abcd1234", "--follow", "--json", "--after", "5"]).expect("tail");
        assert!(matches!(t.c, ClientCommand::Tail { follow: true, json: true, after: Some(5), .. }));
        let t = T::try_parse_from(["t", "chat", "new", "@a", "cairn1b"]).expect("chat new");
        assert!(matches!(t.c, ClientCommand::Chat(ChatCommand::New { ref members }) if members.len() == 2));
        assert!(T::try_parse_from(["t", "chat", "new"]).is_err(), "members required");
        let t = T::try_parse_from(["t", "device", "add", "--to", "/tmp/x"]).expect("device add");
        assert!(matches!(t.c, ClientCommand::Device(DeviceCommand::Add { .. })));
    }
}
