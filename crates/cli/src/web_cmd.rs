//! `cairn web`: prints a one-time login link to the web client of the running node.

use std::path::Path;

use anyhow::{Context as _, Result};
use cairn_node::client::Client;
use clap::Args;

/// `cairn web`.
#[derive(Debug, Args)]
pub(crate) struct WebArgs {
    /// Print only the link (for scripts).
    #[arg(long)]
    quiet: bool,
}

/// Asks the node of `home` for a one-time code and prints `http://127.0.0.1:PORT/#login=CODE`.
/// The browser trades the code for an HttpOnly session cookie; the API token stays on disk.
pub(crate) fn run(home: &Path, args: WebArgs) -> Result<()> {
    let client = Client::for_home(home).context("no web client without a running node")?;
    let login = client.web_login().context("asking the node for a login code")?;
    let url = format!("{}{}", client.api(), login.path);
    if args.quiet {
        println!("{url}");
    } else {
        println!("Open this link in a browser on this machine (valid once, for {} s):", login.expires_in_s);
        println!("  {url}");
        println!("Later logins: open {}/ and type your passphrase, or run `cairn web` again.", client.api());
    }
    Ok(())
}
