//! The fake node: an in-memory [`Backend`] with conversations, devices and a stream.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_node::backend::{ApiError, ApiResult, Backend};
use cairn_node::model::{
    AccountView, ConversationView, DeliveryState, DeliveryView, DeviceAddRequest, DeviceView,
    LedgerStatusView, MemberView, MessageView, RequestView, SendResult, StatusView, StreamEvent, TailQuery,
    TxView, ValidatorView, VerifyView,
};
use tokio::sync::{Notify, broadcast, watch};

#[derive(Default)]
struct State {
    convs: Vec<(ConversationView, Vec<MessageView>)>,
    devices: Vec<DeviceView>,
}

pub(crate) struct Fake {
    state: Mutex<State>,
    events: broadcast::Sender<StreamEvent>,
    arrived: Notify,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) shutdowns: AtomicUsize,
    /// The fake ledger balance (`/v1/balance`, `/v1/payments`).
    pub(crate) balance: std::sync::atomic::AtomicU64,
}

impl Fake {
    pub(crate) fn new() -> Fake {
        Fake {
            state: Mutex::new(State {
                convs: Vec::new(),
                devices: vec![DeviceView { device: "cairndev1me".into(), this_device: true }],
            }),
            events: broadcast::channel(64).0,
            arrived: Notify::new(),
            stop: watch::channel(false).0,
            shutdowns: AtomicUsize::new(0),
            balance: std::sync::atomic::AtomicU64::new(100),
        }
    }

    fn members(names: &[String]) -> ApiResult<Vec<MemberView>> {
        names
            .iter()
            .map(|m| {
                if m.starts_with("cairn1") || m.starts_with('@') {
                    Ok(MemberView {
                        account: m.clone(),
                        handle: m.strip_prefix('@').map(str::to_string),
                        fingerprint: "12345 67890".into(),
                        devices: vec![format!("cairndev1{}", m.len())],
                    })
                } else {
                    Err(ApiError::BadRequest(format!("{m:?} is neither an account id nor an @handle")))
                }
            })
            .collect()
    }

    fn with_conv<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut (ConversationView, Vec<MessageView>)) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut st = self.state.lock().unwrap();
        match st.convs.iter_mut().find(|(c, _)| c.id == id || (id.len() >= 8 && c.id.starts_with(id))) {
            Some(c) => f(c),
            None => Err(ApiError::NotFound(format!("no conversation {id}"))),
        }
    }
}

pub(crate) fn delivery() -> DeliveryView {
    DeliveryView { state: DeliveryState::Stored, stored_on: 2, delivered_to: 0, members: 1 }
}

impl Backend for Fake {
    async fn status(&self) -> ApiResult<StatusView> {
        let conversations = self.state.lock().unwrap().convs.len();
        Ok(StatusView {
            account: "cairn1me".into(),
            device: "cairndev1me".into(),
            fingerprint: "12345 67890".into(),
            handle: None,
            peer_id: "12D3Koo".into(),
            p2p: vec!["/ip4/127.0.0.1/tcp/1".into()],
            peers: 3,
            store_peers: 1,
            ledger_height: Some(7),
            mailbox_backlog: 0,
            pending_sends: 0,
            conversations,
            roles: vec!["user".into()],
        })
    }

    async fn create_conversation(&self, members: Vec<String>) -> ApiResult<ConversationView> {
        let members = Fake::members(&members)?;
        let mut st = self.state.lock().unwrap();
        let id = format!("{:064x}", st.convs.len() + 0xabcdef01);
        let view =
            ConversationView { topic: format!("t{id}"), id, epoch: 1, active: true, members, messages: 0 };
        st.convs.push((view.clone(), Vec::new()));
        Ok(view)
    }

    async fn conversations(&self) -> ApiResult<Vec<ConversationView>> {
        Ok(self.state.lock().unwrap().convs.iter().map(|(c, _)| c.clone()).collect())
    }

    async fn conversation(&self, id: String) -> ApiResult<ConversationView> {
        self.with_conv(&id, |(c, _)| Ok(c.clone()))
    }

    async fn add_members(&self, id: String, members: Vec<String>) -> ApiResult<ConversationView> {
        let more = Fake::members(&members)?;
        self.with_conv(&id, |(c, _)| {
            c.members.extend(more);
            c.epoch += 1;
            Ok(c.clone())
        })
    }

    async fn remove_member(&self, id: String, member: String) -> ApiResult<ConversationView> {
        self.with_conv(&id, |(c, _)| {
            let before = c.members.len();
            c.members.retain(|m| m.account != member);
            if c.members.len() == before {
                return Err(ApiError::NotFound(format!("{member} is not a member")));
            }
            c.epoch += 1;
            Ok(c.clone())
        })
    }

    async fn leave(&self, id: String) -> ApiResult<()> {
        self.with_conv(&id, |(c, _)| {
            if !c.active {
                return Err(ApiError::Conflict("already left".into()));
            }
            c.active = false;
            Ok(())
        })
    }

    async fn send(&self, id: String, text: String, _key: Option<String>) -> ApiResult<SendResult> {
        let msg = self.with_conv(&id, |(c, msgs)| {
            let seq = msgs.len() as u64 + 1;
            let m = MessageView {
                seq,
                id: format!("{seq:064x}"),
                conversation: c.id.clone(),
                sender: "cairn1me".into(),
                device: "cairndev1me".into(),
                handle: None,
                timestamp_ms: 1,
                text,
                parents: msgs.last().map(|p| vec![p.id.clone()]).unwrap_or_default(),
                after_gap: false,
                verdict: None,
                labels: Vec::new(),
            };
            msgs.push(m.clone());
            c.messages = seq;
            Ok(m)
        })?;
        self.arrived.notify_waiters();
        let _ = self.events.send(StreamEvent::Message(msg.clone()));
        // The other member's receipt arrives a little later.
        let events = self.events.clone();
        let (id, conversation) = (msg.id.clone(), msg.conversation.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let delivery = DeliveryView { state: DeliveryState::Delivered, delivered_to: 1, ..delivery() };
            let _ = events.send(StreamEvent::Delivery { id, conversation, delivery });
        });
        Ok(SendResult { id: msg.id, delivery: delivery() })
    }

    async fn forget(&self, id: String) -> ApiResult<()> {
        self.with_conv(
            &id,
            |(c, _)| if c.active { Err(ApiError::Conflict("leave first".into())) } else { Ok(()) },
        )
    }

    async fn erase(&self, id: String, message: String) -> ApiResult<SendResult> {
        self.with_conv(&id, |(_, msgs)| {
            let before = msgs.len();
            msgs.retain(|m| m.id != message);
            if msgs.len() == before {
                return Err(ApiError::NotFound(format!("no message {message}")));
            }
            Ok(())
        })?;
        Ok(SendResult { id: format!("{:064x}", u64::MAX), delivery: delivery() })
    }

    async fn policy(&self, id: String) -> ApiResult<cairn_node::model::PolicyView> {
        self.with_conv(&id, |_| Ok(cairn_node::policy_api::view_of(None)))
    }

    async fn set_policy(
        &self,
        id: String,
        req: cairn_node::model::PolicySetRequest,
    ) -> ApiResult<cairn_node::model::PolicyView> {
        let pin = cairn_node::policy_api::pin_of(&req, Vec::new())?;
        self.with_conv(&id, |_| Ok(cairn_node::policy_api::view_of(pin.as_ref())))
    }

    async fn forget_account(
        &self,
        _req: cairn_node::model::AccountForgetRequest,
    ) -> ApiResult<cairn_node::model::AccountForgetView> {
        Err(ApiError::Conflict("the fake backend has no ledger".into()))
    }

    async fn erasures(
        &self,
        id: String,
        _query: cairn_node::model::ErasuresQuery,
    ) -> ApiResult<Vec<cairn_node::model::ErasureView>> {
        self.with_conv(&id, |_| Ok(Vec::new()))
    }

    async fn messages(&self, id: String, query: TailQuery) -> ApiResult<Vec<MessageView>> {
        let deadline = Instant::now() + Duration::from_millis(query.wait_ms.unwrap_or(0).min(3_000));
        loop {
            let arrived = self.arrived.notified();
            let page = self.with_conv(&id, |(_, msgs)| {
                Ok(msgs
                    .iter()
                    .filter(|m| m.seq > query.after.unwrap_or(0))
                    .take(query.limit.unwrap_or(100).min(100))
                    .cloned()
                    .collect::<Vec<_>>())
            })?;
            let now = Instant::now();
            if !page.is_empty() || now >= deadline {
                return Ok(page);
            }
            let _ = tokio::time::timeout(deadline - now, arrived).await;
        }
    }

    async fn verify(&self, id: String) -> ApiResult<VerifyView> {
        self.with_conv(&id, |(_, msgs)| {
            Ok(VerifyView {
                intact: true,
                envelopes: msgs.len(),
                signatures_verified: msgs.len(),
                anchors: 0,
                erased: 0,
                first_problem: None,
                problems: 0,
            })
        })
    }

    async fn claim_handle(&self, name: String) -> ApiResult<TxView> {
        if name.trim_start_matches('@') == "taken" {
            return Err(ApiError::Conflict("handle @taken belongs to another account".into()));
        }
        Ok(TxView { tx: "aa".into(), height: 8 })
    }

    async fn devices(&self) -> ApiResult<Vec<DeviceView>> {
        Ok(self.state.lock().unwrap().devices.clone())
    }

    async fn add_device(&self, req: DeviceAddRequest) -> ApiResult<DeviceView> {
        if req.passphrase.is_empty() {
            return Err(ApiError::BadRequest("empty passphrase".into()));
        }
        let d = DeviceView { device: format!("cairndev1{}", req.home.len()), this_device: false };
        self.state.lock().unwrap().devices.push(d.clone());
        Ok(d)
    }

    async fn revoke_device(&self, device: String) -> ApiResult<TxView> {
        let mut st = self.state.lock().unwrap();
        let before = st.devices.len();
        st.devices.retain(|d| d.device != device);
        if st.devices.len() == before {
            return Err(ApiError::NotFound(format!("no device {device}")));
        }
        Ok(TxView { tx: "bb".into(), height: 9 })
    }

    async fn ledger_status(&self) -> ApiResult<LedgerStatusView> {
        Ok(LedgerStatusView {
            chain: "cc".into(),
            validators: vec![ValidatorView {
                rpc: "127.0.0.1:1".into(),
                height: Some(9),
                state_root: Some("dd".into()),
                error: None,
            }],
        })
    }

    async fn account(&self, who: String) -> ApiResult<AccountView> {
        if who == "@nobody" {
            return Err(ApiError::NotFound("no account @nobody".into()));
        }
        if who == "@down" {
            return Err(ApiError::Unavailable("no validator answered".into()));
        }
        Ok(AccountView { account: who, handle: None, devices: vec![], height: 9, proof_verified: true })
    }

    async fn requests(&self) -> ApiResult<Vec<RequestView>> {
        Ok(vec![RequestView {
            id: "ab".repeat(32),
            inviter: "cairn1stranger".into(),
            inviter_device: "cairndev1stranger".into(),
            received_at_ms: 5,
            members: 2,
        }])
    }

    async fn accept_request(&self, id: String) -> ApiResult<ConversationView> {
        Err(ApiError::NotFound(format!("no invitation request {id} (see `cairn requests`)")))
    }

    async fn decline_request(&self, id: String) -> ApiResult<()> {
        if "ab".repeat(32).starts_with(&id) && id.len() >= 8 {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("no invitation request {id} (see `cairn requests`)")))
        }
    }

    async fn deliveries(&self, id: String) -> ApiResult<Vec<cairn_node::api_history::DeliveryEntry>> {
        self.with_conv(&id, |(_, msgs)| {
            Ok(msgs
                .iter()
                .rev()
                .map(|m| cairn_node::api_history::DeliveryEntry { id: m.id.clone(), delivery: delivery() })
                .collect())
        })
    }

    async fn balance(&self) -> ApiResult<cairn_node::api_ledger::BalanceView> {
        Ok(cairn_node::api_ledger::BalanceView {
            account: "cairn1me".into(),
            balance: self.balance.load(Ordering::SeqCst),
            registered: true,
            height: 7,
        })
    }

    async fn pay(
        &self,
        req: cairn_node::api_ledger::PaymentRequest,
    ) -> Result<cairn_node::api_ledger::PaymentView, cairn_node::api_ledger::PaymentError> {
        use cairn_node::api_ledger::{PaymentError, PaymentView};
        if req.to == "@me" {
            return Err(PaymentError::SelfPayment);
        }
        if req.to != "@bob" {
            return Err(PaymentError::UnknownRecipient(format!(
                "{} is not registered on the ledger",
                req.to
            )));
        }
        let have = self.balance.load(Ordering::SeqCst);
        if have < req.amount {
            return Err(PaymentError::InsufficientFunds { have, need: req.amount });
        }
        self.balance.store(have - req.amount, Ordering::SeqCst);
        Ok(PaymentView {
            tx: "ab".repeat(32),
            height: 8,
            to: "cairn1bob".into(),
            amount: req.amount,
            balance: have - req.amount,
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<StreamEvent> {
        self.events.subscribe()
    }

    fn metrics(&self) -> String {
        let m = cairn_node::metrics::Metrics::new();
        m.set_peers(3);
        m.render()
    }

    fn shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
        self.stop.send_replace(true);
    }
}
