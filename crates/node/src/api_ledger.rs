//! Balance and payments: `GET /v1/balance` and `POST /v1/payments` (a ledger `Transfer` signed
//! with this device's account key), with typed errors the web client can act on
//! (`insufficient_funds`, `unknown_recipient`, `bad_amount`, `self_payment`, `no_account_key`).
//!
//! The handlers are generic over [`Backend`]; [`Service`] runs them on the ledger worker's
//! blocking pool, like the other account operations.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_ledger::tx::TxBody;

use crate::backend::{ApiError, Backend};
use crate::error::NodeError;
use crate::model::ErrorBody;
use crate::service::Service;
use crate::shell::ledger::{read_retry, resolve_account, submit_tx, unavailable};

/// Time given to a payment to be finalized.
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /v1/balance` answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BalanceView {
    /// This account.
    pub account: String,
    /// Its balance, in the ledger's smallest unit (0 if not registered yet).
    pub balance: u64,
    /// Whether the account is registered on the ledger.
    pub registered: bool,
    /// Ledger height the balance was read at.
    pub height: u64,
}

/// `POST /v1/payments` body.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// Recipient: `@handle` or account id (`cairn1…`).
    pub to: String,
    /// Amount, in the ledger's smallest unit (at least 1).
    pub amount: u64,
}

/// `POST /v1/payments` answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PaymentView {
    /// Transaction id (hex).
    pub tx: String,
    /// Height it was finalized at.
    pub height: u64,
    /// The recipient's account id.
    pub to: String,
    /// Amount paid.
    pub amount: u64,
    /// This account's balance afterwards (fees included).
    pub balance: u64,
}

/// Why a payment was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PaymentError {
    /// The balance does not cover the amount (409 `insufficient_funds`).
    #[error(
        "insufficient funds: the balance is {have}, the payment needs {need}; pay less, or receive funds first"
    )]
    InsufficientFunds {
        /// Balance.
        have: u64,
        /// Amount asked.
        need: u64,
    },
    /// No such handle or account (404 `unknown_recipient`).
    #[error("{0}")]
    UnknownRecipient(String),
    /// An amount of 0 (400 `bad_amount`).
    #[error("the amount must be at least 1")]
    BadAmount,
    /// Paying oneself (400 `self_payment`).
    #[error("this is your own account: choose another recipient")]
    SelfPayment,
    /// This device holds no account key (409 `no_account_key`).
    #[error("this device holds no account key: pay from the device that created the account")]
    NoAccountKey,
    /// Anything else.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<NodeError> for PaymentError {
    fn from(e: NodeError) -> Self {
        PaymentError::Api(e.into())
    }
}

impl PaymentError {
    fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            PaymentError::InsufficientFunds { .. } => (StatusCode::CONFLICT, "insufficient_funds"),
            PaymentError::UnknownRecipient(_) => (StatusCode::NOT_FOUND, "unknown_recipient"),
            PaymentError::BadAmount => (StatusCode::BAD_REQUEST, "bad_amount"),
            PaymentError::SelfPayment => (StatusCode::BAD_REQUEST, "self_payment"),
            PaymentError::NoAccountKey => (StatusCode::CONFLICT, "no_account_key"),
            PaymentError::Api(e) => (
                match e {
                    ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
                    ApiError::NotFound(_) => StatusCode::NOT_FOUND,
                    ApiError::Conflict(_) => StatusCode::CONFLICT,
                    ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                    ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                },
                e.code(),
            ),
        }
    }
}

impl IntoResponse for PaymentError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        (status, axum::Json(ErrorBody { error: self.to_string(), code: code.to_string() })).into_response()
    }
}

/// `GET /v1/balance`.
pub(crate) async fn get_balance<B: Backend>(backend: &B) -> Result<axum::Json<BalanceView>, PaymentError> {
    Ok(axum::Json(backend.balance().await?))
}

/// `POST /v1/payments` (the body already parsed).
pub(crate) async fn post_payment<B: Backend>(
    backend: &B,
    req: PaymentRequest,
) -> Result<axum::Json<PaymentView>, PaymentError> {
    if req.amount == 0 {
        return Err(PaymentError::BadAmount);
    }
    Ok(axum::Json(backend.pay(req).await?))
}

/// This account's balance, read from the ledger.
pub(crate) async fn balance(s: &Service) -> Result<BalanceView, ApiError> {
    s.ledger(|c, shared| {
        let me = shared.identity.account;
        let account = read_retry(|| c.account(&me)).map_err(unavailable)?;
        let height = c.status().map(|s| s.height).unwrap_or(0);
        Ok(BalanceView {
            account: me.to_text(),
            balance: account.as_ref().map_or(0, |a| a.balance),
            registered: account.is_some(),
            height,
        })
    })
    .await
}

/// Pays `req.amount` to `req.to` with a ledger transfer.
pub(crate) async fn pay(s: &Service, req: PaymentRequest) -> Result<PaymentView, PaymentError> {
    if req.amount == 0 {
        return Err(PaymentError::BadAmount);
    }
    s.ledger(move |c, shared| {
        let k = &shared.identity;
        let Some(key) = k.account_key.as_ref() else { return Ok(Err(PaymentError::NoAccountKey)) };
        let to = match resolve_account(c, &req.to) {
            Ok(to) => to,
            Err(NodeError::NotFound(why)) => return Ok(Err(PaymentError::UnknownRecipient(why))),
            Err(e) => return Err(e),
        };
        if to == k.account {
            return Ok(Err(PaymentError::SelfPayment));
        }
        let have = read_retry(|| c.account(&k.account)).map_err(unavailable)?.map_or(0, |a| a.balance);
        if have < req.amount {
            return Ok(Err(PaymentError::InsufficientFunds { have, need: req.amount }));
        }
        let body = TxBody::Transfer { to, amount: req.amount };
        let (tx, height, _) = match submit_tx(c, k.account, key, body, PAYMENT_TIMEOUT) {
            Ok(done) => done,
            // The fee or a concurrent payment took what the check above saw.
            Err(NodeError::Conflict(why)) if why.contains("insufficient balance") => {
                return Ok(Err(PaymentError::InsufficientFunds { have, need: req.amount }));
            }
            Err(e) => return Err(e),
        };
        let balance = read_retry(|| c.account(&k.account)).map_err(unavailable)?.map_or(0, |a| a.balance);
        Ok(Ok(PaymentView {
            tx: hex::encode(tx.id().0),
            height,
            to: to.to_text(),
            amount: req.amount,
            balance,
        }))
    })
    .await?
}
