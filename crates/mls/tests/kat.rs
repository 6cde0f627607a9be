//! IETF MLS test vectors (mlswg/mls-implementations) against the primitives Cairn ships:
//! `cairn_mls::primitives` over OpenMLS's RustCrypto provider. Files: `tests/vectors/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cairn_mls::CIPHERSUITE;
use cairn_mls::primitives::{
    decrypt_with_label, derive_secret, derive_tree_secret, encrypt_with_label, expand_with_label, export,
    extract, key_schedule, mac, ratchet_key_nonce, ref_hash, sender_data_key_nonce, sign_with_label,
    transcript_hashes, tree_leaf_secret, verify_with_label, vl,
};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::Ciphersuite;
use serde_json::Value;

fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/vectors/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let v: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(!v.is_empty(), "{name}: no vectors");
    v
}

fn h(v: &Value, k: &str) -> Vec<u8> {
    hex::decode(v[k].as_str().unwrap_or_else(|| panic!("missing {k}"))).unwrap()
}

fn suite(v: &Value) -> Ciphersuite {
    let cs = Ciphersuite::try_from(v["cipher_suite"].as_u64().unwrap() as u16).unwrap();
    assert_eq!(cs, CIPHERSUITE, "the shipped vectors are Cairn's suite");
    cs
}

fn u16n(n: usize) -> u16 {
    u16::try_from(n).unwrap()
}

/// Reads TLS-presentation structures.
struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn v(&mut self) -> &'a [u8] {
        let n = match self.0[0] >> 6 {
            0 => usize::from(self.u8() & 0x3f),
            1 => usize::from(self.u16() & 0x3fff),
            2 => (self.u32() & 0x3fff_ffff) as usize,
            _ => panic!("bad varint"),
        };
        self.take(n)
    }
    fn pos(&self, whole: &[u8]) -> usize {
        whole.len() - self.0.len()
    }
}

#[test]
fn crypto_basics() {
    let c = RustCrypto::default();
    for v in load("crypto-basics") {
        let cs = suite(&v);
        let r = &v["ref_hash"];
        assert_eq!(
            ref_hash(&c, cs, r["label"].as_str().unwrap().as_bytes(), &h(r, "value")).unwrap(),
            h(r, "out")
        );
        let e = &v["expand_with_label"];
        let out = expand_with_label(
            &c,
            cs,
            &h(e, "secret"),
            e["label"].as_str().unwrap().as_bytes(),
            &h(e, "context"),
            e["length"].as_u64().unwrap() as u16,
        )
        .unwrap();
        assert_eq!(out, h(e, "out"));
        let d = &v["derive_secret"];
        assert_eq!(
            derive_secret(&c, cs, &h(d, "secret"), d["label"].as_str().unwrap().as_bytes()).unwrap(),
            h(d, "out")
        );
        let t = &v["derive_tree_secret"];
        let out = derive_tree_secret(
            &c,
            cs,
            &h(t, "secret"),
            t["label"].as_str().unwrap().as_bytes(),
            t["generation"].as_u64().unwrap() as u32,
            t["length"].as_u64().unwrap() as u16,
        )
        .unwrap();
        assert_eq!(out, h(t, "out"));
        let s = &v["sign_with_label"];
        let label = s["label"].as_str().unwrap().as_bytes();
        verify_with_label(&c, cs, &h(s, "pub"), label, &h(s, "content"), &h(s, "signature")).unwrap();
        // Ed25519 is deterministic: our signature is the vector's.
        assert_eq!(
            sign_with_label(&c, cs, &h(s, "priv"), label, &h(s, "content")).unwrap(),
            h(s, "signature")
        );
        let mut bad = h(s, "signature");
        bad[0] ^= 1;
        assert!(verify_with_label(&c, cs, &h(s, "pub"), label, &h(s, "content"), &bad).is_err());
        let x = &v["encrypt_with_label"];
        let label = x["label"].as_str().unwrap().as_bytes();
        let pt = decrypt_with_label(
            &c,
            cs,
            &h(x, "priv"),
            label,
            &h(x, "context"),
            &h(x, "kem_output"),
            &h(x, "ciphertext"),
        )
        .unwrap();
        assert_eq!(pt, h(x, "plaintext"));
        let (kem, ct) =
            encrypt_with_label(&c, cs, &h(x, "pub"), label, &h(x, "context"), b"round trip").unwrap();
        assert_eq!(
            decrypt_with_label(&c, cs, &h(x, "priv"), label, &h(x, "context"), &kem, &ct).unwrap(),
            b"round trip"
        );
    }
}

#[test]
fn secret_tree() {
    let c = RustCrypto::default();
    for v in load("secret-tree") {
        let cs = suite(&v);
        let sd = &v["sender_data"];
        let (key, nonce) =
            sender_data_key_nonce(&c, cs, &h(sd, "sender_data_secret"), &h(sd, "ciphertext")).unwrap();
        assert_eq!((key, nonce), (h(sd, "key"), h(sd, "nonce")));
        let leaves = v["leaves"].as_array().unwrap();
        let n = leaves.len() as u32;
        let mut checked = 0;
        for (i, gens) in leaves.iter().enumerate() {
            let leaf = tree_leaf_secret(&c, cs, &h(&v, "encryption_secret"), n, i as u32).unwrap();
            for g in gens.as_array().unwrap() {
                let gen_ = g["generation"].as_u64().unwrap() as u32;
                let (k, nn) = ratchet_key_nonce(&c, cs, &leaf, b"application", gen_).unwrap();
                assert_eq!(
                    (k, nn),
                    (h(g, "application_key"), h(g, "application_nonce")),
                    "leaf {i} gen {gen_}"
                );
                let (k, nn) = ratchet_key_nonce(&c, cs, &leaf, b"handshake", gen_).unwrap();
                assert_eq!((k, nn), (h(g, "handshake_key"), h(g, "handshake_nonce")), "leaf {i} gen {gen_}");
                checked += 1;
            }
        }
        assert!(checked >= n as usize);
    }
}

#[test]
fn key_schedule_vectors() {
    let c = RustCrypto::default();
    for v in load("key-schedule") {
        let cs = suite(&v);
        let mut init = h(&v, "initial_init_secret");
        let epochs = v["epochs"].as_array().unwrap();
        assert!(!epochs.is_empty());
        for (i, e) in epochs.iter().enumerate() {
            let gc = h(e, "group_context");
            // The group context is the one built from the epoch's fields.
            let mut built = 1u16.to_be_bytes().to_vec();
            built.extend_from_slice(&u16::from(cs).to_be_bytes());
            built.extend_from_slice(&vl(&h(&v, "group_id")));
            built.extend_from_slice(&(i as u64).to_be_bytes());
            built.extend_from_slice(&vl(&h(e, "tree_hash")));
            built.extend_from_slice(&vl(&h(e, "confirmed_transcript_hash")));
            built.extend_from_slice(&vl(&[]));
            assert_eq!(built, gc, "epoch {i} group context");
            let s = key_schedule(&c, cs, &init, &h(e, "commit_secret"), &h(e, "psk_secret"), &gc).unwrap();
            assert_eq!(s.joiner, h(e, "joiner_secret"), "epoch {i}");
            assert_eq!(s.welcome, h(e, "welcome_secret"));
            assert_eq!(s.sender_data, h(e, "sender_data_secret"));
            assert_eq!(s.encryption, h(e, "encryption_secret"));
            assert_eq!(s.exporter, h(e, "exporter_secret"));
            assert_eq!(s.external, h(e, "external_secret"));
            assert_eq!(s.confirmation_key, h(e, "confirmation_key"));
            assert_eq!(s.membership_key, h(e, "membership_key"));
            assert_eq!(s.resumption_psk, h(e, "resumption_psk"));
            assert_eq!(s.epoch_authenticator, h(e, "epoch_authenticator"));
            assert_eq!(s.init, h(e, "init_secret"));
            let kp = c.derive_hpke_keypair(cs.hpke_config(), &s.external).unwrap();
            assert_eq!(kp.public, h(e, "external_pub"));
            let x = &e["exporter"];
            // openmls's redistribution of these vectors passes the label as its hex text.
            let out = export(
                &c,
                cs,
                &s.exporter,
                x["label"].as_str().unwrap().as_bytes(),
                &h(x, "context"),
                x["length"].as_u64().unwrap() as u16,
            )
            .unwrap();
            assert_eq!(out, h(x, "secret"), "epoch {i} exporter");
            init = s.init;
        }
    }
}

#[test]
fn transcript_hash_vectors() {
    let c = RustCrypto::default();
    for v in load("transcript-hashes") {
        let cs = suite(&v);
        let ac = h(&v, "authenticated_content");
        let nh = cs.hash_length();
        let (content, tag_field) = ac.split_at(ac.len() - (1 + nh));
        let tag = R(tag_field).v().to_vec();
        let (confirmed, interim) =
            transcript_hashes(&c, cs, &h(&v, "interim_transcript_hash_before"), content, &tag).unwrap();
        assert_eq!(confirmed, h(&v, "confirmed_transcript_hash_after"));
        assert_eq!(interim, h(&v, "interim_transcript_hash_after"));
        assert_eq!(mac(&c, cs, &h(&v, "confirmation_key"), &confirmed).unwrap(), tag);
    }
}

fn group_context(v: &Value, cs: Ciphersuite) -> Vec<u8> {
    let mut gc = 1u16.to_be_bytes().to_vec();
    gc.extend_from_slice(&u16::from(cs).to_be_bytes());
    gc.extend_from_slice(&vl(&h(v, "group_id")));
    gc.extend_from_slice(&v["epoch"].as_u64().unwrap().to_be_bytes());
    gc.extend_from_slice(&vl(&h(v, "tree_hash")));
    gc.extend_from_slice(&vl(&h(v, "confirmed_transcript_hash")));
    gc.extend_from_slice(&vl(&[]));
    gc
}

fn framed_content(v: &Value, leaf: u32, aad: &[u8], content_type: u8, body: &[u8]) -> Vec<u8> {
    let mut fc = vl(&h(v, "group_id"));
    fc.extend_from_slice(&v["epoch"].as_u64().unwrap().to_be_bytes());
    fc.push(1); // sender type: member
    fc.extend_from_slice(&leaf.to_be_bytes());
    fc.extend_from_slice(&vl(aad));
    fc.push(content_type);
    fc.extend_from_slice(body);
    fc
}

fn tbs(wire_format: u16, fc: &[u8], gc: &[u8]) -> Vec<u8> {
    let mut t = 1u16.to_be_bytes().to_vec();
    t.extend_from_slice(&wire_format.to_be_bytes());
    t.extend_from_slice(fc);
    t.extend_from_slice(gc);
    t
}

#[test]
fn message_protection() {
    let c = RustCrypto::default();
    for v in load("message-protection") {
        let cs = suite(&v);
        let gc = group_context(&v, cs);
        let sig_pub = h(&v, "signature_pub");
        // Public messages: signature over FramedContentTBS and membership tag.
        for (name, ct, is_commit) in [("proposal", 2u8, false), ("commit", 3, true)] {
            let msg = h(&v, &format!("{name}_pub"));
            let mut r = R(&msg);
            assert_eq!((r.u16(), r.u16()), (1, 1), "{name}_pub header");
            let gid = r.v().to_vec();
            assert_eq!(gid, h(&v, "group_id"));
            assert_eq!(r.u64(), v["epoch"].as_u64().unwrap());
            assert_eq!(r.u8(), 1);
            let leaf = r.u32();
            let aad = r.v().to_vec();
            assert_eq!(r.u8(), ct);
            let body = h(&v, name);
            assert_eq!(r.take(body.len()), body.as_slice(), "{name} body");
            let auth_start = r.pos(&msg);
            let sig = r.v().to_vec();
            if is_commit {
                r.v();
            }
            let auth = msg[auth_start..r.pos(&msg)].to_vec();
            let tag = r.v().to_vec();
            assert!(r.0.is_empty());
            let t = tbs(1, &framed_content(&v, leaf, &aad, ct, &body), &gc);
            verify_with_label(&c, cs, &sig_pub, b"FramedContentTBS", &t, &sig).unwrap();
            let mut m = t.clone();
            m.extend_from_slice(&auth);
            assert_eq!(mac(&c, cs, &h(&v, "membership_key"), &m).unwrap(), tag, "{name} membership tag");
        }
        // Private messages: sender data, then content under the sender's ratchet.
        for (name, ct, ratchet) in [
            ("proposal", 2u8, &b"handshake"[..]),
            ("commit", 3, b"handshake"),
            ("application", 1, b"application"),
        ] {
            let msg = h(&v, &format!("{name}_priv"));
            let mut r = R(&msg);
            assert_eq!((r.u16(), r.u16()), (1, 2), "{name}_priv header");
            let gid = r.v().to_vec();
            let epoch = r.u64();
            assert_eq!(r.u8(), ct);
            let aad = r.v().to_vec();
            let enc_sender = r.v().to_vec();
            let ciphertext = r.v().to_vec();
            assert!(r.0.is_empty());
            let (k, n) = sender_data_key_nonce(&c, cs, &h(&v, "sender_data_secret"), &ciphertext).unwrap();
            let mut sd_aad = vl(&gid);
            sd_aad.extend_from_slice(&epoch.to_be_bytes());
            sd_aad.push(ct);
            let sd = c.aead_decrypt(cs.aead_algorithm(), &k, &enc_sender, &n, &sd_aad).unwrap();
            let mut s = R(&sd);
            let (leaf, generation) = (s.u32(), s.u32());
            let guard = s.take(4).to_vec();
            let leaf_secret = tree_leaf_secret(&c, cs, &h(&v, "encryption_secret"), 2, leaf).unwrap();
            let (key, mut nonce) = ratchet_key_nonce(&c, cs, &leaf_secret, ratchet, generation).unwrap();
            for (b, g) in nonce.iter_mut().zip(&guard) {
                *b ^= g;
            }
            let mut content_aad = sd_aad.clone();
            content_aad.extend_from_slice(&vl(&aad));
            let pt = c.aead_decrypt(cs.aead_algorithm(), &key, &ciphertext, &nonce, &content_aad).unwrap();
            let body = if ct == 1 { vl(&h(&v, name)) } else { h(&v, name) };
            assert_eq!(&pt[..body.len()], body.as_slice(), "{name} plaintext");
            let mut p = R(&pt[body.len()..]);
            let sig = p.v().to_vec();
            if ct == 3 {
                p.v();
            }
            assert!(p.0.iter().all(|b| *b == 0), "{name}: padding is zeros");
            let t = tbs(2, &framed_content(&v, leaf, &aad, ct, &body), &gc);
            verify_with_label(&c, cs, &sig_pub, b"FramedContentTBS", &t, &sig).unwrap();
            // An altered ciphertext does not decrypt.
            let mut bad = ciphertext.clone();
            bad[0] ^= 1;
            assert!(c.aead_decrypt(cs.aead_algorithm(), &key, &bad, &nonce, &content_aad).is_err());
        }
    }
}

#[test]
fn welcome() {
    let c = RustCrypto::default();
    for v in load("welcome") {
        let cs = suite(&v);
        let kp_msg = h(&v, "key_package");
        assert_eq!(&kp_msg[..4], &[0, 1, 0, 5]);
        let kp_ref = ref_hash(&c, cs, b"MLS 1.0 KeyPackage Reference", &kp_msg[4..]).unwrap();
        let w = h(&v, "welcome");
        let mut r = R(&w);
        assert_eq!((r.u16(), r.u16(), r.u16()), (1, 3, u16::from(cs)));
        let secrets = r.v();
        let egi = r.v().to_vec();
        assert!(r.0.is_empty());
        let mut s = R(secrets);
        let mut found = None;
        while !s.0.is_empty() {
            let member = s.v().to_vec();
            let (kem, ct) = (s.v().to_vec(), s.v().to_vec());
            if member == kp_ref {
                found = Some((kem, ct));
            }
        }
        let (kem, ct) = found.expect("a secret for our key package");
        let gs = decrypt_with_label(&c, cs, &h(&v, "init_priv"), b"Welcome", &egi, &kem, &ct).unwrap();
        let mut g = R(&gs);
        let joiner = g.v().to_vec();
        if g.u8() == 1 {
            g.v();
        }
        assert!(g.v().is_empty(), "no PSKs in these vectors");
        let nh = cs.hash_length();
        let member = extract(&c, cs, &joiner, &vec![0; nh]).unwrap();
        let ws = derive_secret(&c, cs, &member, b"welcome").unwrap();
        let key = expand_with_label(&c, cs, &ws, b"key", &[], u16n(cs.aead_key_length())).unwrap();
        let nonce = expand_with_label(&c, cs, &ws, b"nonce", &[], u16n(cs.aead_nonce_length())).unwrap();
        let gi = c.aead_decrypt(cs.aead_algorithm(), &key, &egi, &nonce, &[]).unwrap();
        let mut r = R(&gi);
        r.u16();
        r.u16();
        r.v();
        r.u64();
        r.v();
        let cth = r.v().to_vec();
        r.v();
        let gc = gi[..r.pos(&gi)].to_vec();
        r.v();
        let tag = r.v().to_vec();
        r.u32();
        let tbs_end = r.pos(&gi);
        let sig = r.v().to_vec();
        assert!(r.0.is_empty());
        verify_with_label(&c, cs, &h(&v, "signer_pub"), b"GroupInfoTBS", &gi[..tbs_end], &sig).unwrap();
        let epoch = expand_with_label(&c, cs, &member, b"epoch", &gc, u16n(nh)).unwrap();
        let ck = derive_secret(&c, cs, &epoch, b"confirm").unwrap();
        assert_eq!(mac(&c, cs, &ck, &cth).unwrap(), tag, "confirmation tag");
    }
}
