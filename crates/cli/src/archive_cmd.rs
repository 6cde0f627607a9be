//! `cairn export` and `cairn import`: a user's data as a portable, passphrase-sealed archive
//! (JSON Lines; the format is documented in `cairn_node::archive`). Both run with the node
//! stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_crypto::{Identity, KdfParams, container};
use cairn_node::archive::{self, AccountInfo};
use cairn_proto::Limits;
use clap::Args;

use crate::home::{HANDLE_FILE, KEYSTORE, now_ms, passphrase};

/// `cairn export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// Archive to write (refused if it exists).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// `cairn import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// Archive written by `cairn export`.
    file: PathBuf,
}

/// Writes the archive of `home` (sealed with the keystore's passphrase).
pub(crate) fn export(home: &Path, args: ExportArgs) -> Result<()> {
    if args.out.exists() {
        bail!("{} exists; nothing was written (choose another --out)", args.out.display());
    }
    let ks = home.join(KEYSTORE);
    let keystore = std::fs::read(&ks).with_context(|| format!("no identity in {}", home.display()))?;
    let pass = passphrase(false)?;
    let id = Identity::open(&keystore, &pass)?;
    let (db, history) = archive::open_home(home, &id.device_key, Limits::default())?;
    let account = AccountInfo {
        account: id.account().to_text(),
        device: id.device().to_text(),
        handle: std::fs::read_to_string(home.join(HANDLE_FILE)).ok().map(|h| h.trim().to_owned()),
        keystore,
    };
    let jsonl = archive::export(account, &db, &history, now_ms())?;
    let lines = jsonl.iter().filter(|b| **b == b'\n').count();
    let sealed = container::seal(&jsonl, &pass, KdfParams::default())?;
    write_private(&args.out, &sealed)?;
    println!(
        "exported {lines} records to {} ({} bytes, sealed with your passphrase)",
        args.out.display(),
        sealed.len()
    );
    Ok(())
}

/// Restores an archive into an empty `home`.
pub(crate) fn import(home: &Path, args: ImportArgs) -> Result<()> {
    let ks = home.join(KEYSTORE);
    if ks.exists() {
        bail!("{} already holds an identity; nothing was changed (import into a new --home)", home.display());
    }
    let sealed = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let pass = passphrase(false)?;
    let jsonl = container::open(&sealed, &pass).context("the archive does not open with this passphrase")?;
    let records = archive::parse(&jsonl)?;
    let (keystore, handle) = archive::account_of(&records)?;
    let id = Identity::open(&keystore, &pass)
        .context("the archive's keystore does not open with this passphrase")?;
    std::fs::create_dir_all(home)?;
    restrict_dir(home)?;
    let (db, history) = archive::open_home(home, &id.device_key, Limits::default())?;
    let done = archive::import(&records, &db, &history, now_ms())?;
    drop((db, history));
    write_private(&ks, &keystore)?;
    if let Some(h) = handle {
        std::fs::write(home.join(HANDLE_FILE), h)?;
    }
    println!(
        "imported {} conversations, {} envelopes, {} messages for {} into {}",
        done.conversations,
        done.envelopes,
        done.messages,
        id.account().to_text(),
        home.display()
    );
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn restrict_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}
