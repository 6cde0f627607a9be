//! Where a validator listens, as the genesis names it: an IP address and port, or a DNS name
//! and port (`ledger.example.org:26100`), so a validator whose address changes keeps its
//! entry. Names are resolved when they are used: by a client at each new RPC connection, by a
//! validator process at start for its peers (a peer whose address changes is found again at
//! the next restart).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// Longest DNS name accepted (RFC 1035), bytes.
pub const HOST_BYTES_MAX: usize = 253;

/// A listening address: a socket address, or a DNS name with a port.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Endpoint {
    /// IP address and port.
    Socket(SocketAddr),
    /// DNS name (lower case, checked) and port.
    Name {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
    },
}

/// Why an endpoint was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("'{text}' is not IP:PORT or NAME:PORT ({why})")]
pub struct EndpointError {
    text: String,
    why: &'static str,
}

impl Endpoint {
    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Socket(s) => s.port(),
            Self::Name { port, .. } => *port,
        }
    }

    /// The same host with another port (the RPC listener beside a p2p one).
    pub fn with_port(&self, port: u16) -> Self {
        match self {
            Self::Socket(s) => Self::Socket(SocketAddr::new(s.ip(), port)),
            Self::Name { host, .. } => Self::Name { host: host.clone(), port },
        }
    }

    /// The socket address to connect to: the address itself, or the name's first address
    /// (IPv4 first, as loopback and most validators listen on it).
    pub fn resolve(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Socket(s) => Ok(*s),
            Self::Name { host, port } => {
                let all: Vec<SocketAddr> = (host.as_str(), *port).to_socket_addrs()?.collect();
                all.iter().find(|a| a.is_ipv4()).or(all.first()).copied().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no address"))
                })
            }
        }
    }

    /// The address to listen on: this one (resolved), or every interface at its port when
    /// `any` (a validator behind NAT, whose public name or address is not on any interface).
    pub fn bind_address(&self, any: bool) -> std::io::Result<SocketAddr> {
        if any {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.port()));
        }
        self.resolve()
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(s: SocketAddr) -> Self {
        Self::Socket(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(s) => write!(f, "{s}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| EndpointError { text: text.chars().take(300).collect(), why };
        if let Ok(s) = text.parse::<SocketAddr>() {
            return Ok(Self::Socket(s));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| err("no port"))?;
        let port: u16 = port.parse().map_err(|_| err("bad port"))?;
        if port == 0 {
            return Err(err("port 0"));
        }
        let host = host.to_ascii_lowercase();
        if host.is_empty() || host.len() > HOST_BYTES_MAX {
            return Err(err("host name empty or over 253 bytes"));
        }
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(err("an IPv6 address needs brackets: [ADDR]:PORT"));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !host.trim_end_matches('.').split('.').all(label_ok) {
            return Err(err("a host name is dot-separated labels of letters, digits and '-'"));
        }
        Ok(Self::Name { host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_parse_print_and_resolve() {
        let ip: Endpoint = "127.0.0.1:26100".parse().expect("ip");
        assert_eq!(ip, Endpoint::Socket("127.0.0.1:26100".parse().expect("socket")));
        let v6: Endpoint = "[::1]:7".parse().expect("v6");
        assert_eq!(v6.to_string(), "[::1]:7");
        let name: Endpoint = "Ledger-1.Example.org:26100".parse().expect("name");
        assert_eq!(name, Endpoint::Name { host: "ledger-1.example.org".into(), port: 26100 });
        assert_eq!(name.to_string().parse::<Endpoint>().expect("round trip"), name);
        assert_eq!(name.with_port(26101).port(), 26101);
        let local: Endpoint = "localhost:4242".parse().expect("localhost");
        let addr = local.resolve().expect("localhost resolves");
        assert!(addr.ip().is_loopback() && addr.port() == 4242, "{addr}");
        assert_eq!(local.bind_address(true).expect("any").to_string(), "0.0.0.0:4242");
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        for bad in [
            "",
            "no-port",
            "host:",
            "host:99999",
            "host:0",
            "-bad.example:1",
            "bad_.example:1",
            "a..b:1",
            "::1:80",
            "spa ce:1",
            &format!("{}:1", "a".repeat(300)),
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} accepted");
        }
    }
}
