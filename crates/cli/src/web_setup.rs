//! `cairn up` on a data directory without an account: the web client creates it.
//!
//! The node serves `cairn_node::api_setup` on its API address and prints a one-time setup
//! link; once the page has created the account (keystore, and the handle to claim), the setup
//! server stops and the node starts on the same address with the new identity.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow, bail};
use cairn_crypto::{Identity, KdfParams};

use crate::node_cmd::UpConfig;

/// Creates the account in `home`: the keystore under `pass`, and the handle file.
fn create(home: &Path, pass: &[u8], handle: Option<&str>) -> Result<Identity> {
    let ks = home.join(crate::home::KEYSTORE);
    if ks.exists() {
        bail!("{} already holds an identity", home.display());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .with_context(|| format!("cannot create {}", home.display()))?;
    let id = Identity::generate(crate::home::now_ms())?;
    id.create_file(&ks, pass, KdfParams::default())?;
    if let Some(h) = handle {
        std::fs::write(home.join(crate::home::HANDLE_FILE), format!("{h}\n"))?;
    }
    Ok(id)
}

/// Serves the setup page until the account is created (its identity; `cfg.api` becomes the
/// address in use, so the node starts on the same one) or a signal stops it (None).
pub(crate) async fn run(home: &Path, cfg: &mut UpConfig) -> Result<Option<Identity>> {
    if !cfg.genesis.exists() {
        bail!(
            "no ledger genesis at {}: pass --genesis FILE (e.g. from `cairn ledger genesis`), or use `cairn dev` \
             for a one-machine network",
            cfg.genesis.display()
        );
    }
    let addr: std::net::SocketAddr =
        cfg.api.parse().with_context(|| format!("--api {}: expected IP:PORT on 127.0.0.1", cfg.api))?;
    if !addr.ip().is_loopback() {
        bail!("--api {addr}: the local API only listens on loopback (127.0.0.1)");
    }
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the API on {addr}"))?;
    let addr = listener.local_addr()?;
    let code = cairn_node::api_setup::new_code().map_err(|e| anyhow!(e))?;
    let slot: Arc<Mutex<Option<Identity>>> = Arc::default();
    let (h, s) = (home.to_owned(), slot.clone());
    let opts = cairn_node::api_setup::SetupOptions {
        create: Arc::new(move |pass: &[u8], handle: Option<&str>| {
            let id = create(&h, pass, handle).map_err(|e| format!("{e:#}"))?;
            let account = id.account().to_text();
            *s.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id);
            Ok(account)
        }),
        session_file: Some(home.join("web-sessions")),
    };
    eprintln!(
        "no account in {} yet: create one in your browser at http://{addr}/#setup={code} \
         (or stop this and run `cairn --home {} init`)",
        home.display(),
        home.display()
    );
    let created =
        cairn_node::api_setup::serve(listener, &code, opts, crate::node_cmd::wait_for_signal()).await?;
    if !created {
        return Ok(None);
    }
    let id = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let id = id.ok_or_else(|| {
        anyhow!("the account was created but its identity was lost (bug): restart `cairn up`")
    })?;
    eprintln!("account {} created from the web client; starting the node", id.account().to_text());
    cfg.api = addr.to_string();
    Ok(Some(id))
}
