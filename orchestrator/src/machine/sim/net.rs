//! The simulated pair's network. Every socket a simulated processor listens
//! on (control, work, link) sits behind a loopback TCP proxy whose two
//! directions pass through gates: closing a gate holds the bytes where they
//! are — as a paused VM or a cut link does, with TCP delivering what was held
//! once the gate opens again (or the peer gives up and closes first).
//! The proxies live on their own thread and runtime, so they keep running
//! whatever the caller's runtime does, and stop with the [`Net`].

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How long the proxy waits for the processor behind it to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// A switch that lets bytes through (open) or holds them (closed).
#[derive(Debug)]
pub struct Gate(watch::Sender<bool>);

impl Gate {
    /// An open gate.
    pub fn open() -> Gate {
        Gate(watch::Sender::new(true))
    }

    /// Open or close it.
    pub fn set(&self, open: bool) {
        self.0.send_replace(open);
    }

    /// Whether it is open now.
    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    fn watch(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// The gates each direction of one proxy must pass, all of them open.
#[derive(Debug, Default)]
pub struct Route<'a> {
    /// Toward the listening processor.
    pub inbound: Vec<&'a Gate>,
    /// Back from it.
    pub outbound: Vec<&'a Gate>,
}

/// A thread running every proxy of a simulated pair.
pub struct Net {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Net {
    /// Start the network's thread.
    pub fn start() -> std::io::Result<Net> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("sim-net".into()).spawn(move || {
            let _ = rt.block_on(stopped);
            // Dropping the runtime cancels every proxy task and closes its sockets.
            rt.shutdown_timeout(Duration::from_secs(1));
        })?;
        Ok(Net { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Forward connections accepted on `public` to `target`, through `route`'s gates.
    pub fn proxy(&self, public: TcpListener, target: SocketAddr, route: Route<'_>) -> std::io::Result<()> {
        public.set_nonblocking(true)?;
        let inbound: Vec<_> = route.inbound.iter().map(|g| g.watch()).collect();
        let outbound: Vec<_> = route.outbound.iter().map(|g| g.watch()).collect();
        let _guard = self.handle.enter();
        let listener = tokio::net::TcpListener::from_std(public)?;
        self.handle.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let (inbound, outbound) = (inbound.clone(), outbound.clone());
                tokio::spawn(async move {
                    // Nobody listening behind (the processor is down): close, as a dead peer would.
                    let Ok(Ok(server)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, inbound), pump(sr, cw, outbound));
                });
            }
        });
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copy `from` to `to`, each chunk only once every gate is open.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut gates: Vec<watch::Receiver<bool>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for g in &mut gates {
            if g.wait_for(|open| *open).await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_closed_gate_holds_bytes_and_opening_it_delivers_them() {
        let net = Net::start().unwrap_or_else(|e| panic!("{e}"));
        let gate = Gate::open();
        let public = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = public.local_addr().unwrap_or_else(|e| panic!("{e}"));
        net.proxy(public, echo_server().await, Route { inbound: vec![&gate], outbound: vec![] })
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
        let mut got = [0u8; 5];
        c.write_all(b"hello").await.unwrap_or_default();
        c.read_exact(&mut got).await.unwrap_or_default();
        assert_eq!(&got, b"hello");

        gate.set(false);
        c.write_all(b"held!").await.unwrap_or_default();
        let held = tokio::time::timeout(Duration::from_millis(200), c.read_exact(&mut got)).await;
        assert!(held.is_err(), "bytes passed a closed gate");
        gate.set(true);
        let passed = tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut got)).await;
        assert!(passed.is_ok() && &got == b"held!", "held bytes were not delivered after the gate opened");
    }
}
