//! The host's channel to a guest agent. In a guest the agent always listens
//! on AF_VSOCK; the host reaches it through the kernel (`/dev/vhost-vsock`,
//! connect to CID:port) or through the userspace vhost-device-vsock daemon's
//! unix socket (`CONNECT <port>\n`, then `OK <n>\n`, then the stream). Tests
//! of the agent on the host use plain TCP.

use hitless_protocol::{from_line, to_line, ControlReply, ControlRequest, CONTROL_PORT};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// How long opening a channel may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A byte stream to an agent.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What went wrong talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Could not connect (the agent may still be booting).
    #[error("connect to agent port {port}: {detail}")]
    Connect {
        /// Guest port.
        port: u32,
        detail: String,
    },
    /// The agent did not answer in time.
    #[error("agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke.
    #[error("agent connection: {0}")]
    Io(#[from] std::io::Error),
    /// The answer is not protocol.
    #[error("agent reply: {0}")]
    Protocol(#[from] hitless_protocol::ProtocolError),
}

/// How to reach one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// Kernel vsock to this CID.
    Kernel(u32),
    /// vhost-device-vsock unix socket.
    User(PathBuf),
    /// TCP, one address per port (tests of the agent on the host).
    Tcp {
        /// Control port address.
        control: SocketAddr,
        /// Work port address.
        work: SocketAddr,
    },
}

impl Channel {
    /// Open a stream to guest `port` (bounded: a wedged transport is an error, not a hang).
    pub async fn connect(&self, port: u32) -> Result<Box<dyn Stream>, ChannelError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(port))
            .await
            .map_err(|_| ChannelError::Connect { port, detail: format!("no answer within {CONNECT_TIMEOUT:?}") })?
    }

    async fn connect_inner(&self, port: u32) -> Result<Box<dyn Stream>, ChannelError> {
        let err = |detail: String| ChannelError::Connect { port, detail };
        match self {
            Channel::Kernel(cid) => {
                let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, port))
                    .await
                    .map_err(|e| err(format!("vsock cid {cid}: {e}")))?;
                Ok(Box::new(s))
            }
            Channel::User(uds) => {
                let s =
                    tokio::net::UnixStream::connect(uds).await.map_err(|e| err(format!("{}: {e}", uds.display())))?;
                let mut pending = Pending(Some(s));
                let Some(s) = pending.0.as_mut() else { return Err(err("no stream".into())) };
                s.write_all(format!("CONNECT {port}\n").as_bytes()).await.map_err(|e| err(e.to_string()))?;
                // Read the "OK <port>" line byte by byte: nothing after it may be consumed here.
                let mut line = Vec::new();
                loop {
                    let mut b = [0u8; 1];
                    let n = s.read(&mut b).await.map_err(|e| err(e.to_string()))?;
                    if n == 0 {
                        // The daemon closed it: nothing is pending any more.
                        pending.0.take();
                        return Err(err("nobody listens on that guest port yet".into()));
                    }
                    if b[0] == b'\n' {
                        break;
                    }
                    line.push(b[0]);
                    if line.len() > 64 {
                        return Err(err("garbled vhost-device-vsock handshake".into()));
                    }
                }
                let s = pending.0.take().ok_or_else(|| err("no stream".into()))?;
                if !line.starts_with(b"OK") {
                    return Err(err(format!("handshake answer {:?}", String::from_utf8_lossy(&line))));
                }
                Ok(Box::new(s))
            }
            Channel::Tcp { control, work } => {
                let addr = if port == CONTROL_PORT { control } else { work };
                let s = tokio::net::TcpStream::connect(addr).await.map_err(|e| err(format!("{addr}: {e}")))?;
                s.set_nodelay(true)?;
                Ok(Box::new(s))
            }
        }
    }
}

/// How long a given-up vhost-device-vsock handshake is kept open for the guest's answer.
const HANDSHAKE_LINGER: Duration = Duration::from_secs(10);

/// A connection to vhost-device-vsock whose `CONNECT` is not answered yet.
///
/// vhost-device-vsock 0.3.0 writes the guest's `OK <port>` to the host's
/// connection with an `unwrap`: if the host has closed it by then, the write
/// fails (EPIPE), the daemon panics and exits, and the guest is unreachable
/// from then on (seen in the VM tests under TCG load: a call's timeout
/// dropped a connect in progress). So a handshake that is given up is not
/// closed at once: dropped before the answer, the stream stays open in the
/// background until the answer or EOF arrives (at most [`HANDSHAKE_LINGER`]).
struct Pending(Option<tokio::net::UnixStream>);

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut s) = self.0.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            let drain = async {
                let mut b = [0u8; 64];
                loop {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if b[..n].contains(&b'\n') => break,
                        Ok(_) => {}
                    }
                }
            };
            let _ = tokio::time::timeout(HANDSHAKE_LINGER, drain).await;
        });
    }
}

/// A control connection to one agent.
pub struct AgentClient {
    reader: BufReader<tokio::io::ReadHalf<Box<dyn Stream>>>,
    writer: tokio::io::WriteHalf<Box<dyn Stream>>,
}

impl AgentClient {
    /// Connect to the agent's control port.
    pub async fn connect(ch: &Channel) -> Result<Self, ChannelError> {
        let s = ch.connect(CONTROL_PORT).await?;
        let (r, w) = tokio::io::split(s);
        Ok(AgentClient { reader: BufReader::new(r), writer: w })
    }

    /// Send one request; read its replies with [`AgentClient::reply`] (a command answers with many).
    pub async fn send(&mut self, req: &ControlRequest) -> Result<(), ChannelError> {
        Ok(self.writer.write_all(&to_line(req)?).await?)
    }

    /// The next reply, waiting up to `timeout`.
    pub async fn reply(&mut self, timeout: Duration) -> Result<ControlReply, ChannelError> {
        let fut = async {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line).await? == 0 {
                return Err(ChannelError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "agent closed the connection",
                )));
            }
            Ok(from_line(&line)?)
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| ChannelError::Timeout(timeout))?
    }

    /// Send one request and wait (up to `timeout`) for its reply.
    pub async fn request(&mut self, req: &ControlRequest, timeout: Duration) -> Result<ControlReply, ChannelError> {
        let started = tokio::time::Instant::now();
        tokio::time::timeout(timeout, self.send(req)).await.map_err(|_| ChannelError::Timeout(timeout))??;
        self.reply(timeout.saturating_sub(started.elapsed())).await.map_err(|e| match e {
            ChannelError::Timeout(_) => ChannelError::Timeout(timeout),
            e => e,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A connect given up before the daemon answers leaves the connection open for the answer.
    #[tokio::test]
    async fn a_given_up_vsock_handshake_stays_open_until_answered() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("vsock.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let ch = Channel::User(path);
        // The caller gives up after 50 ms; the "guest" answers after 300 ms.
        let gave_up = tokio::time::timeout(Duration::from_millis(50), ch.connect(1024)).await;
        assert!(gave_up.is_err());
        let (mut daemon_side, _) = listener.accept().await.unwrap();
        let mut connect = [0u8; 13];
        daemon_side.read_exact(&mut connect).await.unwrap();
        assert_eq!(&connect, b"CONNECT 1024\n");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // vhost-device-vsock writes the answer and panics if this fails: it must not.
        daemon_side.write_all(b"OK 1024\n").await.unwrap();
        // Then the host side closes.
        let mut rest = Vec::new();
        let n =
            tokio::time::timeout(Duration::from_secs(5), daemon_side.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert_eq!(n, 0);
    }
}
