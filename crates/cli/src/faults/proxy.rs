//! The user-space proxy that runs inside each namespace (`cairn bench faults-proxy`; this
//! kernel has no `netem`):
//!
//! - `forward LISTEN_PORT TARGET`: TCP connections that an iptables `REDIRECT` sends to
//!   LISTEN_PORT are forwarded to TARGET, each chunk held for the current delay (base ± jitter,
//!   in order: a chunk never overtakes the one before it), from a stand-in source address per
//!   peer (see [`stand_in`]).
//! - `egress LISTEN_PORT`: TCP connections this namespace's own processes open, which an
//!   iptables `REDIRECT` in the `nat` table's `OUTPUT` chain sends to 127.0.0.1:LISTEN_PORT, are
//!   forwarded to their original destination (`SO_ORIGINAL_DST`), delayed the same way, from a
//!   socket marked [`EGRESS_MARK`] (`SO_MARK`) so the rule lets it through. The proxy runs in
//!   the dialer's namespace, so the peer sees the dialer's own address: this is how traffic
//!   between validators, whose p2p accepts a peer only from the address the genesis gives it,
//!   is delayed. Each relayed connection is logged on stdout (`egress FROM -> TO`).
//! - `api SOCKET TARGET`: a Unix socket (file-system sockets cross namespaces) forwarded to the
//!   node's loopback API, so the campaign outside the namespace reaches it.
//! - `delay FILE`: the delay, re-read every 200 ms: `BASE_MS JITTER_MS` (absent: none).
//!
//! Bounded: at most [`CONNECTIONS_MAX`] connections per listener, [`QUEUE_CHUNKS`] chunks of at
//! most 16 KiB queued per direction.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// Connections open at once per listener.
pub(crate) const CONNECTIONS_MAX: usize = 512;
/// Chunks queued per direction of a connection.
pub(crate) const QUEUE_CHUNKS: usize = 64;
/// Bytes read at once.
const CHUNK: usize = 16 * 1024;
/// The `SO_MARK` of the egress proxy's outgoing sockets; the `OUTPUT` redirect skips packets
/// that carry it (`-m mark ! --mark 0x1`).
pub(crate) const EGRESS_MARK: u32 = 1;

/// One line of the proxy's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Directive {
    /// Delayed TCP forward.
    Forward {
        /// Port to listen on (every address of the namespace).
        port: u16,
        /// Where to connect.
        target: String,
    },
    /// Delayed TCP forward of this namespace's own outgoing connections to their original
    /// destination.
    Egress {
        /// Port to listen on (127.0.0.1, where the `OUTPUT` redirect sends them).
        port: u16,
    },
    /// Unix socket to a TCP address (no delay).
    Api {
        /// Socket path.
        socket: PathBuf,
        /// Where to connect.
        target: String,
    },
    /// The delay file.
    Delay(PathBuf),
}

/// Parses the configuration text (one directive a line, `#` comments).
pub(crate) fn parse(text: &str) -> Result<Vec<Directive>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        out.push(match w.as_slice() {
            ["forward", port, target] => Directive::Forward {
                port: port.parse().with_context(|| format!("line {}: bad port {port}", n + 1))?,
                target: (*target).to_owned(),
            },
            ["egress", port] => Directive::Egress {
                port: port.parse().with_context(|| format!("line {}: bad port {port}", n + 1))?,
            },
            ["api", socket, target] => Directive::Api { socket: socket.into(), target: (*target).to_owned() },
            ["delay", file] => Directive::Delay(file.into()),
            _ => bail!(
                "line {}: expected `forward PORT TARGET`, `egress PORT`, `api SOCKET TARGET` or `delay FILE`: {line}",
                n + 1
            ),
        });
    }
    Ok(out)
}

/// Parses a delay file's text: `BASE_MS JITTER_MS` (anything else: no delay).
pub(crate) fn parse_delay(text: &str) -> (u32, u32) {
    let mut w = text.split_whitespace().map(str::parse::<u32>);
    match (w.next(), w.next()) {
        (Some(Ok(b)), Some(Ok(j))) => (b.min(10_000), j.min(b)),
        _ => (0, 0),
    }
}

/// The current delay, shared by every connection.
#[derive(Debug, Default)]
struct Delay {
    base: AtomicU32,
    jitter: AtomicU32,
    rng: AtomicU64,
}

impl Delay {
    /// One draw of base ± jitter.
    fn draw(&self) -> Duration {
        let (b, j) = (self.base.load(Ordering::Relaxed), self.jitter.load(Ordering::Relaxed));
        if b == 0 {
            return Duration::ZERO;
        }
        let mut r = super::scenario::Rng(self.rng.fetch_add(1, Ordering::Relaxed));
        let ms = u64::from(b) - u64::from(j) + r.range(0, 2 * u64::from(j));
        Duration::from_millis(ms)
    }
}

/// Runs the proxy of configuration file `conf` until killed.
pub(crate) fn run(conf: &Path) -> Result<()> {
    let text = std::fs::read_to_string(conf).with_context(|| format!("reading {}", conf.display()))?;
    let directives = parse(&text)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let delay =
            Arc::new(Delay { rng: AtomicU64::new(u64::from(std::process::id())), ..Delay::default() });
        let mut tasks = Vec::new();
        for d in directives {
            match d {
                Directive::Delay(file) => {
                    let delay = delay.clone();
                    tasks.push(tokio::spawn(async move {
                        loop {
                            let (b, j) =
                                parse_delay(&tokio::fs::read_to_string(&file).await.unwrap_or_default());
                            delay.base.store(b, Ordering::Relaxed);
                            delay.jitter.store(j, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }));
                }
                Directive::Forward { port, target } => {
                    let l = TcpListener::bind(("0.0.0.0", port))
                        .await
                        .with_context(|| format!("listening on {port}"))?;
                    let delay = delay.clone();
                    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
                    tasks.push(tokio::spawn(async move {
                        while let Ok((inbound, peer)) = l.accept().await {
                            let Ok(permit) = slots.clone().acquire_owned().await else { return };
                            let (delay, target) = (delay.clone(), target.clone());
                            tokio::spawn(async move {
                                if let Ok(out) = connect_as(peer, &target).await {
                                    relay_delayed(inbound, out, delay).await;
                                }
                                drop(permit);
                            });
                        }
                    }));
                }
                Directive::Egress { port } => {
                    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                        .await
                        .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
                    let own = l.local_addr()?;
                    let delay = delay.clone();
                    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
                    tasks.push(tokio::spawn(async move {
                        while let Ok((inbound, peer)) = l.accept().await {
                            let Ok(permit) = slots.clone().acquire_owned().await else { return };
                            let delay = delay.clone();
                            tokio::spawn(async move {
                                match original_destination(&inbound, own) {
                                    Ok(to) => match connect_marked(to).await {
                                        Ok(out) => {
                                            note(&format!("egress {peer} -> {to}"));
                                            relay_delayed(inbound, out, delay).await;
                                        }
                                        Err(e) => note(&format!("egress {peer} -> {to}: {e}")),
                                    },
                                    Err(e) => note(&format!("egress {peer}: {e}")),
                                }
                                drop(permit);
                            });
                        }
                    }));
                }
                Directive::Api { socket, target } => {
                    let _ = std::fs::remove_file(&socket);
                    let l = UnixListener::bind(&socket)
                        .with_context(|| format!("binding {}", socket.display()))?;
                    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
                    tasks.push(tokio::spawn(async move {
                        while let Ok((mut inbound, _)) = l.accept().await {
                            let Ok(permit) = slots.clone().acquire_owned().await else { return };
                            let target = target.clone();
                            tokio::spawn(async move {
                                if let Ok(mut out) = TcpStream::connect(&target).await {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                                }
                                drop(permit);
                            });
                        }
                    }));
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

/// The loopback address that stands for peer `peer` towards the node behind the proxy:
/// `a.b.c.d` becomes `127.1.c.d`, so the node still tells its peers apart by address (per-IP
/// limits, gossipsub's IP-colocation score) although every connection comes from the proxy.
pub(crate) fn stand_in(peer: SocketAddr) -> SocketAddr {
    match peer.ip() {
        IpAddr::V4(v4) => {
            let [_, _, c, d] = v4.octets();
            SocketAddr::from((Ipv4Addr::new(127, 1, c, d), 0))
        }
        IpAddr::V6(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    }
}

/// Connects to `target` from the stand-in address of `peer`.
async fn connect_as(peer: SocketAddr, target: &str) -> std::io::Result<TcpStream> {
    let to: SocketAddr = target.parse().map_err(|_| std::io::Error::other(format!("bad target {target}")))?;
    let s = TcpSocket::new_v4()?;
    s.bind(stand_in(peer))?;
    s.connect(to).await
}

/// One line on stdout (the proxy's log file); a failed write is ignored.
fn note(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Where a connection that the `OUTPUT` redirect sent to the egress listener at `own` was
/// going (an error for one that was not redirected: it would loop back to the proxy).
fn original_destination(inbound: &TcpStream, own: SocketAddr) -> std::io::Result<SocketAddr> {
    let to = socket2::SockRef::from(inbound)
        .original_dst_v4()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))?;
    if to == own {
        return Err(std::io::Error::other("not redirected (original destination is the proxy itself)"));
    }
    Ok(to)
}

/// Connects to `to` from a socket marked [`EGRESS_MARK`], which the `OUTPUT` redirect skips.
async fn connect_marked(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_mark(EGRESS_MARK)?;
    s.set_nonblocking(true)?;
    TcpSocket::from_std_stream(s.into()).connect(to).await
}

/// Relays `a` and `b` both ways, each direction delayed ([`pump`]), until both ends close.
async fn relay_delayed(a: TcpStream, b: TcpStream, delay: Arc<Delay>) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let (ra, wa) = a.into_split();
    let (rb, wb) = b.into_split();
    tokio::join!(pump(ra, wb, delay.clone()), pump(rb, wa, delay));
}

/// Copies `from` to `to`, each chunk released at its arrival plus one delay draw (never before
/// the chunk ahead of it); closes `to`'s write side at the end.
async fn pump(
    mut from: impl AsyncRead + Unpin + Send + 'static,
    mut to: impl AsyncWrite + Unpin,
    delay: Arc<Delay>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let reader = tokio::spawn(async move {
        let mut last = Instant::now();
        loop {
            let mut buf = vec![0u8; CHUNK];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.truncate(n);
                    last = last.max(Instant::now() + delay.draw());
                    if tx.send((last, buf)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some((due, buf)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&buf).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_and_delay_files_parse() {
        let d = parse(
            "# proxy\nforward 4101 10.77.0.11:4001\napi /tmp/a.sock 127.0.0.1:7000\ndelay /tmp/d\negress 5100\n",
        )
        .unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d[0], Directive::Forward { port: 4101, target: "10.77.0.11:4001".into() });
        assert_eq!(d[3], Directive::Egress { port: 5100 });
        assert!(parse("egress").is_err());
        assert!(parse("egress 70000").is_err());
        assert!(parse("forward x y").is_err());
        assert!(parse("listen 1").is_err());
        assert_eq!(parse_delay("200 100\n"), (200, 100));
        assert_eq!(parse_delay("100 300"), (100, 100));
        assert_eq!(parse_delay(""), (0, 0));
        assert_eq!(parse_delay("x"), (0, 0));
        assert_eq!(stand_in("10.77.0.12:4000".parse().unwrap()), "127.1.0.12:0".parse().unwrap());
    }

    /// A connection that no `OUTPUT` redirect sent to the egress listener has no other
    /// destination: it is refused, not relayed back to the proxy itself.
    #[tokio::test]
    async fn an_egress_connection_that_was_not_redirected_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let own = l.local_addr().unwrap();
        let _c = TcpStream::connect(own).await.unwrap();
        let (inbound, _) = l.accept().await.unwrap();
        assert!(original_destination(&inbound, own).is_err());
    }

    #[test]
    fn delay_draws_stay_in_bounds() {
        let d = Delay::default();
        assert_eq!(d.draw(), Duration::ZERO);
        d.base.store(200, Ordering::Relaxed);
        d.jitter.store(100, Ordering::Relaxed);
        let draws: Vec<u128> = (0..1000).map(|_| d.draw().as_millis()).collect();
        assert!(draws.iter().all(|ms| (100..=300).contains(ms)));
        assert!(draws.iter().any(|&ms| ms < 150) && draws.iter().any(|&ms| ms > 250));
    }

    #[tokio::test]
    async fn forwards_in_order_after_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let delay = Arc::new(Delay::default());
        delay.base.store(100, Ordering::Relaxed);
        delay.jitter.store(50, Ordering::Relaxed);
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let d2 = delay.clone();
        tokio::spawn(async move {
            let (inbound, _) = front.accept().await.unwrap();
            let out = TcpStream::connect(target).await.unwrap();
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = out.into_split();
            tokio::join!(pump(ri, wo, d2.clone()), pump(ro, wi, d2));
        });
        let mut c = TcpStream::connect(front_addr).await.unwrap();
        let t = Instant::now();
        let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg, "bytes in order");
        // Two proxied directions, each at least 50 ms.
        assert!(t.elapsed() >= Duration::from_millis(100), "{:?}", t.elapsed());
    }
}
