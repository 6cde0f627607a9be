//! The `cairn` binary as a user meets it: init, id, refusals, exit codes, selfcheck.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn cairn(home: &std::path::Path, pass: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env("CAIRN_PASSPHRASE", pass)
        .env_remove("CAIRN_HOME")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn init_id_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    let out = cairn(&home, "pw-1", &["init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ks = home.join("keystore");
    assert_eq!(std::fs::metadata(&ks).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&ks).unwrap();

    let id = cairn(&home, "pw-1", &["id", "--json"]);
    assert!(id.status.success(), "{}", text(&id.stderr));
    let idtext = text(&id.stdout);
    assert!(idtext.contains("\"account\":\"cairn1"), "{idtext}");
    assert!(text(&out.stdout).contains(idtext.split('"').nth(3).unwrap()), "init and id disagree");

    let again = cairn(&home, "pw-2", &["init"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already holds an identity"), "{}", text(&again.stderr));
    assert_eq!(std::fs::read(&ks).unwrap(), before, "refused init changed the keystore");

    let wrong = cairn(&home, "nope", &["id"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong.stderr).contains("wrong passphrase"), "{}", text(&wrong.stderr));

    let missing = cairn(&dir.path().join("nobody"), "pw", &["id"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("cairn --home"), "{}", text(&missing.stderr));
}

#[test]
fn truncated_keystore_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("bob");
    assert!(cairn(&home, "pw", &["init"]).status.success());
    let ks = home.join("keystore");
    let bytes = std::fs::read(&ks).unwrap();
    std::fs::write(&ks, &bytes[..bytes.len() / 2]).unwrap();
    let out = cairn(&home, "pw", &["id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("malformed"), "{}", text(&out.stderr));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = cairn(dir.path(), "pw", &["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn selfcheck_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = cairn(dir.path(), "pw", &["selfcheck", "--messages", "60"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("selfcheck passed: 12 checks"), "{s}");
    assert!(!s.contains("FAIL"));
}
