//! Account operations of the API that only talk to the ledger: handles, devices, status,
//! proven account look-ups. They run on the blocking pool, never on the actor.

use std::path::PathBuf;
use std::time::Duration;

use cairn_crypto::Identity;
use cairn_ledger::tx::{TxBody, normalize_handle};
use cairn_proto::{DeviceCert, DeviceId};
use ed25519_dalek::SigningKey;

use crate::backend::{ApiError, ApiResult};
use crate::engine::IdentityKeys;
use crate::error::NodeError;
use crate::model::{AccountView, DeviceAddRequest, DeviceView, LedgerStatusView, TxView, ValidatorView};
use crate::service::Service;
use crate::shell::ledger::{read_retry, resolve_account, submit_tx, unavailable};
use crate::shell::now_ms;

/// Time given to an account transaction to be finalized.
const ACCOUNT_TX_TIMEOUT: Duration = Duration::from_secs(30);

/// This device's account key, or a refusal saying where to run the operation.
fn account_key(k: &IdentityKeys) -> Result<&SigningKey, NodeError> {
    k.account_key
        .as_ref()
        .ok_or_else(|| NodeError::Conflict(cairn_crypto::KeystoreError::NoAccountKey.to_string()))
}

/// Claims a handle.
pub(crate) async fn claim_handle(s: &Service, name: String) -> ApiResult<TxView> {
    let raw = name.trim().trim_start_matches('@').to_owned();
    let name = normalize_handle(&raw).map_err(|e| ApiError::BadRequest(format!("@{raw}: {e}")))?;
    let (tx, height) = s
        .ledger(move |c, shared| {
            let k = &shared.identity;
            let body = TxBody::ClaimHandle { name: name.clone() };
            let (tx, height, _) = submit_tx(c, k.account, account_key(k)?, body, ACCOUNT_TX_TIMEOUT)?;
            shared.set_handle(Some(name));
            Ok((tx, height))
        })
        .await?;
    Ok(TxView { tx: hex::encode(tx.id().0), height })
}

/// This account's devices.
pub(crate) async fn devices(s: &Service) -> ApiResult<Vec<DeviceView>> {
    s.ledger(|c, shared| {
        let me = shared.identity.device;
        let devices =
            read_retry(|| c.devices(&shared.identity.account)).map_err(unavailable)?.unwrap_or_default();
        Ok(devices.into_iter().map(|d| DeviceView { device: d.to_text(), this_device: d == me }).collect())
    })
    .await
}

/// Creates a new device's keystore in another directory and registers the device.
pub(crate) async fn add_device(s: &Service, req: DeviceAddRequest) -> ApiResult<DeviceView> {
    if req.passphrase.is_empty() {
        return Err(ApiError::BadRequest("the new device's keystore needs a passphrase".into()));
    }
    s.ledger(move |c, shared| {
        let home = PathBuf::from(&req.home);
        let ks = home.join("keystore");
        if ks.exists() {
            return Err(NodeError::Conflict(format!(
                "{} already holds a keystore; nothing was changed",
                home.display()
            )));
        }
        let k = &shared.identity;
        let account_key = account_key(k)?;
        let seed =
            cairn_crypto::keystore::random_bytes::<32>().map_err(|e| NodeError::Internal(e.to_string()))?;
        let device_key = SigningKey::from_bytes(&seed);
        let device = DeviceId(device_key.verifying_key().to_bytes());
        let cert = DeviceCert::issue(account_key, device, now_ms());
        let body = TxBody::add_device(&c.chain(), cert, &device_key);
        // The new device's keystore holds its own key only: the account key stays here.
        let identity =
            Identity::device_only(device_key, cert).map_err(|e| NodeError::Internal(e.to_string()))?;
        std::fs::create_dir_all(&home)
            .map_err(|e| NodeError::BadRequest(format!("{}: {e}", home.display())))?;
        identity
            .create_file(&ks, req.passphrase.as_bytes(), cairn_crypto::KdfParams::default())
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        submit_tx(c, k.account, account_key, body, ACCOUNT_TX_TIMEOUT)?;
        shared.db.set_pending_device(&device.0, true, now_ms())?;
        Ok(DeviceView { device: device.to_text(), this_device: false })
    })
    .await
}

/// Revokes a device on the ledger; the caller then removes it from every conversation.
pub(crate) async fn revoke_device(s: &Service, device: String) -> ApiResult<(DeviceId, TxView)> {
    let d = DeviceId::from_text(device.trim())
        .map_err(|e| ApiError::BadRequest(format!("'{device}' is not a device id (cairndev1…): {e}")))?;
    if d == s.shared().identity.device {
        return Err(ApiError::BadRequest(
            "this is the device you are using: revoke it from another one".into(),
        ));
    }
    let (tx, height) = s
        .ledger(move |c, shared| {
            let k = &shared.identity;
            let body = TxBody::RevokeDevice { device: d };
            let (tx, height, _) = submit_tx(c, k.account, account_key(k)?, body, ACCOUNT_TX_TIMEOUT)?;
            let _ = shared.db.set_pending_device(&d.0, false, now_ms());
            Ok((tx, height))
        })
        .await?;
    Ok((d, TxView { tx: hex::encode(tx.id().0), height }))
}

/// The ledger half of forgetting the account: releases its handle, then revokes every device,
/// this one last (signed with the account key, which this device must hold). Returns the
/// handle released and the devices revoked.
pub(crate) async fn release_and_revoke_all(s: &Service) -> ApiResult<(Option<String>, Vec<DeviceId>)> {
    s.ledger(move |c, shared| {
        let k = &shared.identity;
        let key = account_key(k)?;
        let acct = read_retry(|| c.account(&k.account)).map_err(unavailable)?.ok_or_else(|| {
            NodeError::NotFound("this account is not on the ledger: nothing to forget there".into())
        })?;
        let mut released = None;
        if let Some(name) = acct.handle.clone() {
            submit_tx(c, k.account, key, TxBody::ReleaseHandle { name: name.clone() }, ACCOUNT_TX_TIMEOUT)?;
            shared.set_handle(None);
            released = Some(name);
        }
        let mut devices = acct.active_devices();
        // This device last: until then it can still sign for the account if a step fails.
        devices.sort_by_key(|d| *d == k.device);
        for d in &devices {
            submit_tx(c, k.account, key, TxBody::RevokeDevice { device: *d }, ACCOUNT_TX_TIMEOUT)?;
            let _ = shared.db.set_pending_device(&d.0, false, now_ms());
        }
        Ok((released, devices))
    })
    .await
}

/// What each validator says.
pub(crate) async fn ledger_status(s: &Service) -> ApiResult<LedgerStatusView> {
    let genesis = s.genesis().clone();
    s.ledger(move |c, _| {
        let mut validators = Vec::new();
        for (i, v) in genesis.validators.iter().enumerate() {
            validators.push(match c.status_at(i) {
                Ok(st) => ValidatorView {
                    rpc: v.rpc.to_string(),
                    height: Some(st.height),
                    state_root: Some(hex::encode(st.state_root)),
                    error: None,
                },
                Err(e) => ValidatorView {
                    rpc: v.rpc.to_string(),
                    height: None,
                    state_root: None,
                    error: Some(e.to_string()),
                },
            });
        }
        Ok(LedgerStatusView { chain: hex::encode(c.chain()), validators })
    })
    .await
}

/// An account (id or `@handle`), checked against a certified header.
pub(crate) async fn account(s: &Service, who: String) -> ApiResult<AccountView> {
    s.ledger(move |c, _| {
        let id = resolve_account(c, &who)?;
        let account = read_retry(|| c.account(&id)).map_err(unavailable)?.ok_or_else(|| {
            NodeError::NotFound(format!("{} is not registered on the ledger", id.to_text()))
        })?;
        let height = c.status().map(|s| s.height).unwrap_or(0);
        Ok(AccountView {
            account: id.to_text(),
            handle: account.handle.clone(),
            devices: account.active_devices().iter().map(DeviceId::to_text).collect(),
            height,
            proof_verified: true,
        })
    })
    .await
}
