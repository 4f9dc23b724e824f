//! Where the agent listens: AF_VSOCK in a guest, TCP when run on the host for
//! tests. Both hand out plain byte streams.

use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream from either transport.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A listening address.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// vsock port, any CID.
    Vsock(u32),
    /// TCP address (host-side tests).
    Tcp(SocketAddr),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("vsock:") {
            p.parse().map(Endpoint::Vsock).map_err(|e| format!("bad vsock port {p:?}: {e}"))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            a.parse().map(Endpoint::Tcp).map_err(|e| format!("bad TCP address {a:?}: {e}"))
        } else {
            Err(format!("{s:?}: expected vsock:PORT or tcp:ADDR"))
        }
    }
}

/// A bound listener.
pub enum Listener {
    Vsock(tokio_vsock::VsockListener),
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    /// Bind the endpoint.
    pub async fn bind(ep: &Endpoint) -> std::io::Result<Self> {
        Ok(match ep {
            Endpoint::Vsock(port) => Listener::Vsock(tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                tokio_vsock::VMADDR_CID_ANY,
                *port,
            ))?),
            Endpoint::Tcp(a) => Listener::Tcp(tokio::net::TcpListener::bind(a).await?),
        })
    }

    /// Accept one connection.
    pub async fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Vsock(l) => Box::new(l.accept().await?.0),
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        })
    }
}
