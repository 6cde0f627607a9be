//! `cairn bridge matrix`: the Matrix application-service bridge (crate `cairn-bridge`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;

/// `cairn bridge …`
#[derive(Debug, Args)]
pub(crate) struct BridgeArgs {
    #[command(subcommand)]
    command: BridgeCommand,
}

#[derive(Debug, Subcommand)]
enum BridgeCommand {
    /// Bridge the conversations this account (--home) is in to Matrix rooms, as a Matrix
    /// application service. The node of --home must be running. Write the registration for
    /// the homeserver first with `cairn bridge matrix registration`.
    Matrix(MatrixArgs),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct MatrixArgs {
    #[command(subcommand)]
    command: Option<MatrixCommand>,
    /// TOML file whose `[bridge.matrix]` table may set registration, homeserver, server_name,
    /// listen and data (flags > environment > this file > defaults).
    #[arg(long, env = "CAIRN_BRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The registration file (also given to the homeserver).
    #[arg(long, env = "CAIRN_BRIDGE_REGISTRATION", value_name = "FILE")]
    registration: Option<PathBuf>,
    /// The homeserver's client-server API (`http://127.0.0.1:8008`).
    #[arg(long, env = "CAIRN_BRIDGE_HOMESERVER", value_name = "URL")]
    homeserver: Option<String>,
    /// The homeserver's name (default: asked from the homeserver).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Where to serve the appservice API (default: the registration's url).
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<SocketAddr>,
    /// The bridge's data directory (default: HOME/bridge-matrix).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum MatrixCommand {
    /// Write a new registration file (random tokens, exclusive namespaces `@cairn_.*` and
    /// `#cairn_.*`) to list in the homeserver's `app_service_config_files`.
    Registration {
        /// Where to write it (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Where the homeserver reaches the bridge.
        #[arg(long, default_value = "http://127.0.0.1:29330", value_name = "URL")]
        url: String,
        /// The appservice id.
        #[arg(long, default_value = "cairn")]
        id: String,
    },
}

/// The `[bridge.matrix]` table of a config file.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct MatrixFile {
    registration: Option<PathBuf>,
    homeserver: Option<String>,
    server_name: Option<String>,
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct FileRoot {
    #[serde(default)]
    bridge: BridgeTable,
}

#[derive(Debug, Default, Deserialize)]
struct BridgeTable {
    #[serde(default)]
    matrix: MatrixFile,
}

/// Reads the `[bridge.matrix]` table of `text` (other tables and keys are left to their owners).
fn parse_config(text: &str) -> Result<MatrixFile> {
    let root: FileRoot = toml::from_str(text).context(
        "fix the [bridge.matrix] table (keys: registration, homeserver, server_name, listen, data)",
    )?;
    Ok(root.bridge.matrix)
}

/// Runs `cairn bridge …`.
pub(crate) fn run(home: &Path, args: BridgeArgs) -> Result<()> {
    let BridgeCommand::Matrix(m) = args.command;
    if let Some(MatrixCommand::Registration { out, url, id }) = m.command {
        let reg = cairn_bridge::registration::Registration::generate(&id, &url)?;
        reg.write_new(&out)?;
        println!("registration written to {}", out.display());
        println!("add it to the homeserver's app_service_config_files, restart it, then run:");
        println!(
            "  cairn --home {} bridge matrix --registration {} --homeserver URL",
            home.display(),
            out.display()
        );
        return Ok(());
    }
    let file = match &m.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
            parse_config(&text).with_context(|| format!("config {}", p.display()))?
        }
        None => MatrixFile::default(),
    };
    let (Some(registration), Some(homeserver)) =
        (m.registration.or(file.registration), m.homeserver.or(file.homeserver))
    else {
        bail!(
            "give --registration FILE and --homeserver URL (or write a registration with `cairn bridge matrix registration --out FILE`)"
        );
    };
    let cfg = cairn_bridge::Config {
        registration,
        homeserver,
        server_name: m.server_name.or(file.server_name),
        listen: m.listen.or(file.listen),
        data: m.data.or(file.data).unwrap_or_else(|| home.join("bridge-matrix")),
        cairn_home: home.to_path_buf(),
    };
    cairn_bridge::run(cfg, Arc::new(AtomicBool::new(false))).context("the Matrix bridge stopped")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_bridge_matrix_table_is_read_and_checked() {
        let text = "api = \"127.0.0.1:1\"\n[bridge.matrix]\nregistration = \"/r.yaml\"\nhomeserver = \"http://127.0.0.1:8008\"\nlisten = \"127.0.0.1:29330\"\n";
        let f = parse_config(text).unwrap();
        assert_eq!(f.registration, Some(PathBuf::from("/r.yaml")));
        assert_eq!(f.homeserver.as_deref(), Some("http://127.0.0.1:8008"));
        assert_eq!(f.listen, Some("127.0.0.1:29330".parse().unwrap()));
        assert_eq!(parse_config("api = 1").unwrap(), MatrixFile::default());
        assert!(parse_config("[bridge.matrix]\nhomeservr = \"x\"").is_err(), "a misspelt key is refused");
        assert!(parse_config("[bridge.matrix]\nlisten = \"nope\"").is_err());
    }
}
