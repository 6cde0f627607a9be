//! A blocking client of the homeserver's client-server API, acting as the appservice (bearer
//! `as_token`, `?user_id=` to act as a puppet). Requests are ruma request types; answers are
//! classified by [`crate::retry::classify`] (429 and 5xx are retried by the caller).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Duration;

use ruma::api::auth_scheme::SendAccessToken;
use ruma::api::client::account::register::{LoginType, v3 as register};
use ruma::api::client::account::whoami::v3 as whoami;
use ruma::api::client::alias::get_alias::v3 as get_alias;
use ruma::api::client::appservice::request_ping::v1 as ping;
use ruma::api::client::membership::invite_user::v3 as invite;
use ruma::api::client::membership::join_room_by_id::v3 as join;
use ruma::api::client::membership::leave_room::v3 as leave;
use ruma::api::client::message::send_message_event::v3 as send;
use ruma::api::client::profile::set_profile_field::v3 as set_profile_field;
use ruma::api::client::redact::redact_event::v3 as redact;
use ruma::api::client::room::create_room::v3 as create_room;
use ruma::api::path_builder::{PathBuilder, VersionHistory};
use ruma::api::{
    AppserviceUserIdentity, IncomingResponseExt as _, MatrixVersion, OutgoingRequest,
    OutgoingRequestAppserviceExt as _, SupportedVersions,
};
use ruma::events::room::message::RoomMessageEventContent;
use ruma::{
    EventId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomId, UserId,
};

use crate::retry::{Outcome, classify};

/// Largest answer body read from the homeserver.
const MAX_ANSWER: u64 = 1024 * 1024;

/// Why a homeserver call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// 429: retry after this long.
    #[error("rate limited by the homeserver for {0:?}")]
    RateLimited(Duration),
    /// Unreachable, 5xx or an undecodable answer: retry with backoff.
    #[error("homeserver unavailable: {0}")]
    Transient(String),
    /// Refused for good.
    #[error("homeserver refused: {errcode}: {error}")]
    Fatal {
        /// Matrix errcode.
        errcode: String,
        /// Message.
        error: String,
    },
}

/// The appservice's client of the homeserver.
#[derive(Debug, Clone)]
pub struct Matrix {
    base: String,
    as_token: String,
    appservice_id: String,
    versions: SupportedVersions,
    agent: ureq::Agent,
}

impl Matrix {
    /// A client of the homeserver at `base` (`http://127.0.0.1:8008`).
    pub fn new(base: &str, as_token: &str, appservice_id: &str) -> Matrix {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Matrix {
            base: base.trim_end_matches('/').to_string(),
            as_token: as_token.to_string(),
            appservice_id: appservice_id.to_string(),
            versions: SupportedVersions {
                versions: BTreeSet::from([MatrixVersion::V1_11]),
                features: BTreeSet::new(),
            },
            agent,
        }
    }

    fn call<R>(&self, req: R, user: Option<&UserId>) -> Result<R::IncomingResponse, CallError>
    where
        R: OutgoingRequest<PathBuilder = VersionHistory>,
        for<'a> R::Authentication: ruma::api::auth_scheme::AuthScheme<Input<'a> = SendAccessToken<'a>>,
        for<'a> VersionHistory: PathBuilder<Input<'a> = Cow<'a, SupportedVersions>>,
    {
        let identity = match user {
            Some(u) => AppserviceUserIdentity::new(u),
            None => AppserviceUserIdentity::default(),
        };
        let http = req
            .try_into_http_request_with_identity::<Vec<u8>>(
                &self.base,
                SendAccessToken::Appservice(&self.as_token),
                identity,
                Cow::Borrowed(&self.versions),
            )
            .map_err(|e| CallError::Fatal { errcode: "BRIDGE_REQUEST".into(), error: e.to_string() })?;
        let mut resp = self.agent.run(http).map_err(|e| CallError::Transient(e.to_string()))?;
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| CallError::Transient(format!("reading the answer: {e}")))?;
        match classify(status.as_u16(), retry_after.as_deref(), &body) {
            Outcome::Ok => {}
            Outcome::RateLimited(d) => return Err(CallError::RateLimited(d)),
            Outcome::Transient(t) => return Err(CallError::Transient(t)),
            Outcome::Fatal { errcode, error } => return Err(CallError::Fatal { errcode, error }),
        }
        let answer = ruma::exports::http::Response::builder()
            .status(status)
            .body(body.as_slice())
            .map_err(|e| CallError::Transient(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(answer)
            .map_err(|e| CallError::Transient(format!("undecodable answer: {e}")))
    }

    /// Tells the homeserver the bridge is up (it then retries queued transactions at once).
    pub fn ping(&self) -> Result<Duration, CallError> {
        self.call(ping::Request::new(self.appservice_id.clone()), None).map(|r| r.duration)
    }

    /// The bot's own user id (tells the server name).
    pub fn whoami(&self) -> Result<OwnedUserId, CallError> {
        self.call(whoami::Request::new(), None).map(|r| r.user_id)
    }

    /// Registers a puppet (already registered is fine).
    pub fn register(&self, localpart: &str) -> Result<(), CallError> {
        let mut r = register::Request::new();
        r.username = Some(localpart.to_string());
        r.login_type = Some(LoginType::ApplicationService);
        r.inhibit_login = true;
        match self.call(r, None) {
            Ok(_) => Ok(()),
            Err(CallError::Fatal { errcode, .. }) if errcode == "M_USER_IN_USE" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets a puppet's display name.
    pub fn set_display_name(&self, user: &UserId, name: &str) -> Result<(), CallError> {
        let value = ruma::profile::ProfileFieldValue::DisplayName(name.to_string());
        let req = set_profile_field::Request::new(user.to_owned(), value);
        self.call(req, Some(user)).map(|_| ())
    }

    /// Creates a public room with an alias, as the bot; if the alias exists already (a crash
    /// after creating it), answers the room it names.
    pub fn create_portal(
        &self,
        alias_localpart: &str,
        alias: &str,
        name: &str,
        topic: &str,
    ) -> Result<OwnedRoomId, CallError> {
        let mut r = create_room::Request::new();
        r.room_alias_name = Some(alias_localpart.to_string());
        r.name = Some(name.to_string());
        r.topic = Some(topic.to_string());
        r.preset = Some(create_room::RoomPreset::PublicChat);
        match self.call(r, None) {
            Ok(resp) => Ok(resp.room_id),
            Err(CallError::Fatal { errcode, .. }) if errcode == "M_ROOM_IN_USE" => {
                let alias = OwnedRoomAliasId::try_from(alias)
                    .map_err(|e| CallError::Fatal { errcode: "BRIDGE_ALIAS".into(), error: e.to_string() })?;
                self.call(get_alias::Request::new(alias), None).map(|r| r.room_id)
            }
            Err(e) => Err(e),
        }
    }

    /// Joins `user` (a puppet) to a room.
    pub fn join(&self, room: &RoomId, user: &UserId) -> Result<(), CallError> {
        self.call(join::Request::new(room.to_owned()), Some(user)).map(|_| ())
    }

    /// `user` (a puppet) leaves a room.
    pub fn leave(&self, room: &RoomId, user: &UserId) -> Result<(), CallError> {
        match self.call(leave::Request::new(room.to_owned()), Some(user)) {
            Ok(_) => Ok(()),
            // Not in the room (any more): nothing to do.
            Err(CallError::Fatal { errcode, .. }) if errcode == "M_FORBIDDEN" || errcode == "M_NOT_FOUND" => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The bot invites `user` into a room.
    pub fn invite(&self, room: &RoomId, user: &UserId) -> Result<(), CallError> {
        let to = invite::InvitationRecipient::from(invite::InviteUserId::new(user.to_owned()));
        self.call(invite::Request::new(room.to_owned(), to), None).map(|_| ())
    }

    /// Sends a message as `user` (the bot when `None`); the same `txn` is idempotent.
    pub fn send(
        &self,
        room: &RoomId,
        txn: &str,
        content: &RoomMessageEventContent,
        user: Option<&UserId>,
    ) -> Result<OwnedEventId, CallError> {
        let req = send::Request::new(room.to_owned(), OwnedTransactionId::from(txn), content)
            .map_err(|e| CallError::Fatal { errcode: "BRIDGE_CONTENT".into(), error: e.to_string() })?;
        self.call(req, user).map(|r| r.event_id)
    }

    /// Redacts an event as `user` (its sender); the same `txn` is idempotent.
    pub fn redact(&self, room: &RoomId, event: &EventId, txn: &str, user: &UserId) -> Result<(), CallError> {
        let req = redact::Request::new(room.to_owned(), event.to_owned(), OwnedTransactionId::from(txn));
        self.call(req, Some(user)).map(|_| ())
    }
}
