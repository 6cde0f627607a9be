//! The data directory: keystore, store, run files.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use cairn_crypto::{Identity, KdfParams};

/// Keystore file name inside --home.
pub(crate) const KEYSTORE: &str = "keystore";

/// --home, or the XDG data directory.
pub(crate) fn resolve(home: Option<PathBuf>) -> PathBuf {
    if let Some(h) = home {
        return h;
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("cairn");
    }
    let base = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    base.join(".local/share/cairn")
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Reads the passphrase from CAIRN_PASSPHRASE, or prompts on the terminal.
pub(crate) fn passphrase(confirm: bool) -> Result<Vec<u8>> {
    if let Some(p) = std::env::var_os("CAIRN_PASSPHRASE") {
        return Ok(p.into_encoded_bytes());
    }
    let p = rpassword::prompt_password("Keystore passphrase: ")
        .context("no passphrase: set CAIRN_PASSPHRASE or run in a terminal to be prompted")?;
    if confirm {
        let again = rpassword::prompt_password("Repeat passphrase: ")?;
        if again != p {
            bail!("the two passphrases differ; nothing was written, run `cairn init` again");
        }
    }
    if p.is_empty() {
        bail!("empty passphrase refused; choose one that protects your identity key");
    }
    Ok(p.into_bytes())
}

pub(crate) fn init(home: &Path) -> Result<()> {
    let ks = home.join(KEYSTORE);
    if ks.exists() {
        bail!(
            "{} already holds an identity; nothing was changed (use another --home for a new one)",
            home.display()
        );
    }
    let pass = passphrase(true)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .with_context(|| format!("cannot create {}", home.display()))?;
    let id = Identity::generate(now_ms())?;
    id.create_file(&ks, &pass, KdfParams::default())?;
    println!("created identity in {}", home.display());
    print_identity(&id, false);
    Ok(())
}

/// `init --handle`: the handle is claimed by the node once it has registered the account.
pub(crate) fn init_with_handle(home: &Path, handle: Option<&str>) -> Result<()> {
    let wanted = match handle {
        Some(h) => {
            let raw = h.trim().trim_start_matches('@');
            Some(
                cairn_ledger::tx::normalize_handle(raw)
                    .map_err(|e| anyhow::anyhow!("--handle @{raw}: {e}"))?,
            )
        }
        None => None,
    };
    init(home)?;
    if let Some(h) = wanted {
        fs::write(home.join(HANDLE_FILE), format!("{h}\n"))?;
        println!("handle:      @{h} (claimed on the ledger when the node first runs)");
    }
    Ok(())
}

/// File holding the handle to claim (written by `init --handle`).
pub(crate) const HANDLE_FILE: &str = "handle";

pub(crate) fn load(home: &Path) -> Result<Identity> {
    let ks = home.join(KEYSTORE);
    if !ks.exists() {
        bail!("no identity in {}: create one with `cairn --home {} init`", home.display(), home.display());
    }
    let pass = passphrase(false)?;
    Ok(Identity::open_file(&ks, &pass)?)
}

pub(crate) fn print_id(home: &Path, json: bool) -> Result<()> {
    let id = load(home)?;
    print_identity(&id, json);
    Ok(())
}

fn print_identity(id: &Identity, json: bool) {
    let (a, d, f) = (id.account().to_text(), id.device().to_text(), id.account().fingerprint());
    if json {
        println!("{{\"account\":\"{a}\",\"device\":\"{d}\",\"fingerprint\":\"{f}\"}}");
    } else {
        println!("account:     {a}");
        println!("device:      {d}");
        println!("fingerprint: {f}");
    }
}
