//! Embeds the web client's build output (`web/dist` at the workspace root) into the binary:
//! writes `OUT_DIR/web_assets.rs`, a list of `(path, include_bytes!(file))`. A missing
//! `web/dist` gives an empty list (the node then serves only the API).

#![allow(clippy::expect_used)] // a build script that cannot write its output must stop the build

use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dist = manifest.join("../../web/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    walk(&dist, &mut files);
    files.sort();
    let mut code = String::from("&[\n");
    for f in &files {
        let rel = f.strip_prefix(&dist).expect("walked under dist").to_string_lossy().replace('\\', "/");
        let abs = f.canonicalize().expect("walked file exists");
        code.push_str(&format!("    ({:?}, include_bytes!({:?})),\n", format!("/{rel}"), abs));
    }
    code.push_str("]\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("web_assets.rs");
    std::fs::write(out, code).expect("writing web_assets.rs");
}
