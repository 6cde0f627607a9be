//! Matrix application-service bridge for Cairn (`cairn bridge matrix`).
//!
//! The bridge is a Cairn account with its own node: it talks to that node through the node's
//! local HTTP + WebSocket API, and to a Matrix homeserver as an application service. Each Cairn
//! conversation the bridge account is a member of gets a Matrix room (its *portal*, alias
//! `#cairn_<conversation>:server`, created by the bot `@cairn_bot`); each Cairn member posts
//! there through a puppet `@cairn_<handle or account>:server`; Matrix users in the portal are
//! relayed into the Cairn conversation by the bridge account.
//!
//! Trust: the bridge account reads every message of the conversations it is in, and the
//! Matrix side is not end-to-end encrypted — the homeserver reads it too. Both sides are told
//! when a portal is created; encrypted Matrix rooms are refused.
//!
//! Layout: [`registration`] (the YAML for the homeserver), [`mapping`] and [`retry`] (pure),
//! [`db`] (redb: transaction ids, queues, portals, cursors), [`appservice`] (the server),
//! [`matrix`] (the client), `worker` (the relay loops).

pub mod appservice;
pub mod db;
pub mod mapping;
pub mod matrix;
pub mod registration;
pub mod retry;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::Db;
use crate::mapping::Names;
use crate::matrix::{CallError, Matrix};
use crate::registration::Registration;
use crate::retry::Backoff;

/// Why the bridge cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Bad configuration or registration (the message says what to do).
    #[error("{0}")]
    Config(String),
    /// The bridge's database failed.
    #[error("bridge database: {0}")]
    Storage(String),
    /// Invalid input.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The Cairn node or the homeserver could not be used.
    #[error("{0}")]
    Unavailable(String),
}

/// How to run the bridge.
#[derive(Debug, Clone)]
pub struct Config {
    /// The registration file (written by `cairn bridge matrix registration`).
    pub registration: PathBuf,
    /// The homeserver's client-server API base URL.
    pub homeserver: String,
    /// The homeserver's name; asked from the homeserver (`whoami`) when absent.
    pub server_name: Option<String>,
    /// Where to serve the appservice API; the registration's `url` when absent.
    pub listen: Option<SocketAddr>,
    /// The bridge's own data directory.
    pub data: PathBuf,
    /// The data directory of the bridge account's Cairn node (which must be running).
    pub cairn_home: PathBuf,
}

/// The `host:port` of an `http://host:port[/…]` URL.
fn listen_of(url: &str) -> Result<SocketAddr, BridgeError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        BridgeError::Config(format!("registration url {url} is not http://HOST:PORT; pass --listen"))
    })?;
    let hostport = rest.split('/').next().unwrap_or_default();
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .map_err(|e| BridgeError::Config(format!("registration url {url}: {e}; pass --listen IP:PORT")))
}

/// Retries `f` with backoff until it succeeds or the bridge stops.
fn retry_until<T>(what: &str, stop: &AtomicBool, mut f: impl FnMut() -> Result<T, String>) -> Option<T> {
    let mut backoff = Backoff::default();
    while !stop.load(Ordering::Relaxed) {
        match f() {
            Ok(v) => return Some(v),
            Err(e) => {
                let w = backoff.next_wait();
                tracing::warn!("{what}: {e}; again in {w:?}");
                std::thread::sleep(w);
            }
        }
    }
    None
}

/// Runs the bridge until `stop` is set (or Ctrl-C / SIGTERM).
pub fn run(cfg: Config, stop: Arc<AtomicBool>) -> Result<(), BridgeError> {
    let reg = Registration::read(&cfg.registration)?;
    std::fs::create_dir_all(&cfg.data)
        .map_err(|e| BridgeError::Config(format!("creating {}: {e}", cfg.data.display())))?;
    let db = Arc::new(Db::open(&cfg.data.join("bridge.redb"))?);
    let matrix = Matrix::new(&cfg.homeserver, &reg.as_token, &reg.id);
    let listen = match cfg.listen {
        Some(a) => a,
        None => listen_of(&reg.url)?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BridgeError::Unavailable(format!("tokio: {e}")))?;
    {
        let stop = stop.clone();
        rt.spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let sigterm = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = sigterm => {}
            }
            tracing::info!("stopping the bridge");
            stop.store(true, Ordering::Relaxed);
        });
    }
    let server_name = match cfg.server_name.clone() {
        Some(s) => s,
        None => {
            let Some(bot) = retry_until("asking the homeserver who the bot is", &stop, || {
                matrix.whoami().map_err(|e| e.to_string())
            }) else {
                return Ok(());
            };
            bot.server_name().to_string()
        }
    };
    let names = Names::new(&server_name);
    let Some(account) = retry_until("waiting for the Cairn node", &stop, || {
        cairn_node::client::Client::for_home(&cfg.cairn_home)
            .and_then(|c| c.status())
            .map(|s| s.account)
            .map_err(|e| e.to_string())
    }) else {
        return Ok(());
    };
    tracing::info!("bridge account {account}, homeserver {server_name}, serving on {listen}");

    let (in_wake_tx, in_wake) = std::sync::mpsc::sync_channel(1);
    let (cairn_wake_tx, cairn_wake) = std::sync::mpsc::sync_channel(1);
    let (out_wake_tx, out_wake) = std::sync::mpsc::sync_channel(1);
    let state = Arc::new(appservice::AsState::new(&reg.hs_token, db.clone(), names.clone(), in_wake_tx));
    let listener = rt.block_on(tokio::net::TcpListener::bind(listen)).map_err(|e| {
        BridgeError::Unavailable(format!("listening on {listen}: {e} (is another bridge running?)"))
    })?;
    let server = {
        let stop = stop.clone();
        rt.spawn(async move {
            let stopped = async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            if let Err(e) =
                axum::serve(listener, appservice::router(state)).with_graceful_shutdown(stopped).await
            {
                tracing::error!("appservice server: {e}");
            }
        })
    };
    rt.spawn(worker::stream_wakeups(cfg.cairn_home.clone(), cairn_wake_tx, stop.clone()));
    let ctx = Arc::new(worker::Ctx {
        db,
        matrix: matrix.clone(),
        names,
        home: cfg.cairn_home.clone(),
        node: Mutex::new(None),
        account,
        stop: stop.clone(),
        out_wake: out_wake_tx,
    });
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .map_err(|e| BridgeError::Unavailable(format!("thread: {e}")))
    };
    let threads = [
        {
            let c = ctx.clone();
            spawn("bridge-inbound", Box::new(move || worker::inbound_loop(&c, &in_wake)))?
        },
        {
            let c = ctx.clone();
            spawn("bridge-cairn", Box::new(move || worker::cairn_loop(&c, &cairn_wake)))?
        },
        {
            let c = ctx.clone();
            spawn("bridge-outbound", Box::new(move || worker::outbound_loop(&c, &out_wake)))?
        },
    ];
    // Ping: the homeserver then retries the transactions it holds for the bridge at once
    // (instead of after its backoff, up to 512 s).
    let pinged = retry_until("pinging the homeserver", &stop, || match matrix.ping() {
        Ok(d) => Ok(d),
        Err(CallError::Fatal { errcode, error }) => {
            tracing::warn!("the homeserver refused the ping ({errcode}: {error}); going on");
            Ok(Duration::ZERO)
        }
        Err(e) => Err(e.to_string()),
    });
    if let Some(d) = pinged {
        tracing::info!("homeserver ping answered (round trip {d:?})");
    }
    for t in threads {
        let _ = t.join();
    }
    let _ = rt.block_on(server);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn listen_address_comes_from_the_registration_url() {
        assert_eq!(listen_of("http://127.0.0.1:9000").unwrap(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(listen_of("http://localhost:9000/").unwrap(), "127.0.0.1:9000".parse().unwrap());
        assert!(listen_of("https://x:1").is_err());
        assert!(listen_of("http://bridge.example:1").is_err());
    }
}
