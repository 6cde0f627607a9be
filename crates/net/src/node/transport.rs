//! The transports, assembled by hand so WebSocket can serve TLS: WebSocket first (`…/ws`,
//! and `…/tls/ws` = `/wss` with a configured certificate), then TCP and QUIC; both resolve
//! `/dns`, `/dns4`, `/dns6` names with the system resolver. WebSocket resolves inside,
//! after it took the host name for TLS (SNI and certificate check); had a DNS layer around it
//! resolved first, a name-based certificate would be checked against an IP and fail.

use std::path::Path;
use std::sync::Arc;

use libp2p::core::Transport;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{PeerId, dns, noise, quic, tcp, websocket};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::behaviour::yamux_config;
use super::traffic::{Counted, Counters};

/// Certificates in one PEM file, at most.
const PEM_CERTS_MAX: usize = 16;

/// TLS for WebSocket: a server certificate (then `…/tcp/P/tls/ws` listens with TLS), and
/// extra trust anchors for dialling `wss` peers beside the web PKI roots.
#[derive(Clone, Default)]
pub struct WsTls {
    /// Server certificate chain (DER), leaf first; empty: no TLS listener.
    pub cert_chain_der: Vec<Vec<u8>>,
    /// The server certificate's private key (DER: PKCS#8, PKCS#1 or SEC1).
    pub key_der: Vec<u8>,
    /// Extra trust anchors (DER certificates) for dialling `wss` peers.
    pub trust_der: Vec<Vec<u8>>,
}

impl std::fmt::Debug for WsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTls")
            .field("certs", &self.cert_chain_der.len())
            .field("key", &"(hidden)")
            .field("trust", &self.trust_der.len())
            .finish()
    }
}

impl WsTls {
    /// A server certificate chain and its key from PEM files (as a certificate authority or
    /// `certbot` writes them).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, String> {
        let what = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
        let chain: Vec<Vec<u8>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| what(cert, &e))?
            .take(PEM_CERTS_MAX)
            .map(|c| c.map(|c| c.as_ref().to_vec()).map_err(|e| what(cert, &e)))
            .collect::<Result<_, _>>()?;
        if chain.is_empty() {
            return Err(format!("{}: no PEM certificate in it", cert.display()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| what(key, &e))?;
        Ok(Self { cert_chain_der: chain, key_der: key_der.secret_der().to_vec(), trust_der: vec![] })
    }

    /// The WebSocket TLS configuration; a key that does not parse is an error (libp2p's own
    /// constructor would panic on it).
    fn config(&self) -> Result<websocket::tls::Config, String> {
        let mut b = websocket::tls::Config::builder();
        for t in &self.trust_der {
            b.add_trust(&websocket::tls::Certificate::new(t.clone()))
                .map_err(|e| format!("WebSocket TLS trust anchor: {e}"))?;
        }
        if !self.cert_chain_der.is_empty() {
            PrivateKeyDer::try_from(self.key_der.clone())
                .map_err(|e| format!("WebSocket TLS key: {e} (expected PKCS#8, PKCS#1 or SEC1)"))?;
            let certs = self.cert_chain_der.iter().map(|c| websocket::tls::Certificate::new(c.clone()));
            b.server(websocket::tls::PrivateKey::new(self.key_der.clone()), certs)
                .map_err(|e| format!("WebSocket TLS certificate: {e}"))?;
        }
        Ok(b.finish())
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// WebSocket (with `tls`), TCP and QUIC, all behind DNS resolution, authenticated with Noise
/// and multiplexed with Yamux (QUIC brings its own).
/// TCP connections' traffic is counted in `counters` (see `traffic.rs`).
pub(super) fn build(
    key: &Keypair,
    tls: Option<&WsTls>,
    counters: Arc<Counters>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Error> {
    let tcp_cfg = || tcp::Config::default().nodelay(true);
    let mut ws =
        websocket::Config::new(dns::tokio::Transport::system(tcp::tokio::Transport::new(tcp_cfg()))?);
    if let Some(t) = tls {
        ws.set_tls_config(t.config()?);
    }
    let ws = ws
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux_config())
        .map(|(p, m), _| (p, StreamMuxerBox::new(m)));
    let tcp = tcp::tokio::Transport::new(tcp_cfg())
        .map(move |s, _| Counted::new(s, counters.clone()))
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux_config())
        .map(|(p, m), _| (p, StreamMuxerBox::new(m)));
    let quic =
        quic::tokio::Transport::new(quic::Config::new(key)).map(|(p, m), _| (p, StreamMuxerBox::new(m)));
    // One DNS layer around TCP and QUIC together: it takes every address and fails a dial its
    // inner transport refuses only later, so a DNS layer per transport would never let a QUIC
    // address fall through to QUIC. WebSocket goes first for the same reason: it refuses a
    // non-WebSocket address at once.
    let tcp_quic = dns::tokio::Transport::system(tcp.or_transport(quic).map(|e, _| e.into_inner()))?;
    Ok(ws.or_transport(tcp_quic).map(|e, _| e.into_inner()).boxed())
}
