//! The load probe behind `make bench`'s replication figures: as many work
//! units as the active will acknowledge, over several pipelined connections,
//! for a fixed time, timing each request from send to ack. Unlike
//! [`crate::workload`] it does not follow switchovers: it measures a steady
//! pair, so every ack it counts must be registered by the standby.

use crate::channel::{Channel, ChannelError};
use hitless_protocol::{frame_into, from_frame, Frames, Operation, WorkReply, WorkRequest, PREAMBLE, WORK_PORT};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Probes started by this process (part of their request ids).
static PROBES: AtomicU64 = AtomicU64::new(0);

/// What the probe measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Acks whose update the standby registered first.
    pub registered: u64,
    /// Acks without a standby (simplex) — zero on a healthy pair.
    pub simplex: u64,
    /// Answers other than an ack (rejections, "not active").
    pub refused: u64,
    /// Acks answered from the de-duplication index (a request id the pair had
    /// already applied): nothing was replicated for them, so they are not counted.
    pub duplicate: u64,
    /// Measurement time.
    pub elapsed: Duration,
    /// Send-to-ack time of every acked request, in microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl Figures {
    /// Registered acks per second.
    pub fn per_second(&self) -> f64 {
        self.registered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q`-quantile (0..=1) of the ack latency, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        let v = &self.latencies_us;
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i.min(v.len() - 1)] as f64 / 1000.0
    }

    /// Merge another measurement taken at the same time (another connection).
    fn add(&mut self, o: Figures) {
        self.registered += o.registered;
        self.simplex += o.simplex;
        self.refused += o.refused;
        self.duplicate += o.duplicate;
        self.latencies_us.extend(o.latencies_us);
    }
}

/// When a probe connection stops sending new requests.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// Until this instant (then it waits for the answers in flight).
    Until(Instant),
    /// After this many requests.
    Units(u64),
}

impl Limit {
    fn more(&self, sent: u64) -> bool {
        match self {
            Limit::Until(t) => Instant::now() < *t,
            Limit::Units(n) => sent < *n,
        }
    }
}

/// Drive the active behind `ch` for `duration` with `connections` connections,
/// each keeping `window` requests in flight.
pub async fn measure(
    ch: &Channel,
    connections: usize,
    window: usize,
    duration: Duration,
) -> Result<Figures, ChannelError> {
    probe(ch, connections, window, |start| Limit::Until(start + duration)).await
}

/// [`measure`], but each connection sends exactly `units` requests: the same
/// work whatever the speed, so that instruction counts (under callgrind) compare.
pub async fn measure_units(
    ch: &Channel,
    connections: usize,
    window: usize,
    units: u64,
) -> Result<Figures, ChannelError> {
    probe(ch, connections, window, |_| Limit::Units(units)).await
}

async fn probe(
    ch: &Channel,
    connections: usize,
    window: usize,
    limit: impl Fn(Instant) -> Limit,
) -> Result<Figures, ChannelError> {
    let start = Instant::now();
    // Request ids unique to this probe: ids a pair has seen are answered from
    // its de-duplication index, without replication.
    let probe = PROBES.fetch_add(1, Ordering::Relaxed);
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let stream = ch.connect(WORK_PORT).await?;
        tasks.spawn(one_connection(stream, format!("load{nonce:x}.{probe}.{c}"), window, limit(start)));
    }
    let mut total = Figures::default();
    while let Some(r) = tasks.join_next().await {
        total.add(r.map_err(|e| ChannelError::Io(std::io::Error::other(e)))??);
    }
    total.elapsed = start.elapsed();
    total.latencies_us.sort_unstable();
    Ok(total)
}

/// Open, update, close cycles of units named after `prefix`.
fn request(prefix: &str, n: u64) -> WorkRequest {
    let unit = format!("{prefix}-u{}", n / 3);
    let op = match n % 3 {
        0 => Operation::Open { unit, fields: Default::default() },
        1 => Operation::Update { unit, fields: [("state".to_string(), "connected".to_string())].into() },
        _ => Operation::Close { unit },
    };
    WorkRequest { id: format!("{prefix}-w{n}"), op }
}

async fn one_connection(
    stream: Box<dyn crate::channel::Stream>,
    prefix: String,
    window: usize,
    limit: Limit,
) -> Result<Figures, ChannelError> {
    let (mut r, mut w) = tokio::io::split(stream);
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut f = Figures::default();
    let mut n = 0;
    let mut frames = Frames::new();
    let mut batch = PREAMBLE.to_vec();
    loop {
        // Refill the window in one write after all that arrived is counted:
        // the active then reads many requests per wake-up.
        while sent.len() < window && limit.more(n) {
            let req = request(&prefix, n);
            n += 1;
            frame_into(&req, &mut batch);
            sent.insert(req.id, Instant::now());
        }
        if !batch.is_empty() {
            w.write_all(&batch).await?;
            batch.clear();
        }
        if sent.is_empty() {
            return Ok(f);
        }
        // Bounded: a pair that stops answering ends the probe with an error.
        let got = tokio::time::timeout(Duration::from_secs(5), r.read_buf(frames.spare()))
            .await
            .map_err(|_| ChannelError::Timeout(Duration::from_secs(5)))??;
        if got == 0 {
            return Err(ChannelError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        while let Some(frame) = frames.next_frame()? {
            let reply: WorkReply = from_frame(frame)?;
            let Some(t) = sent.remove(reply.id()) else { continue };
            match reply {
                WorkReply::Ack { duplicate: true, .. } => f.duplicate += 1,
                WorkReply::Ack { registered, .. } => {
                    f.latencies_us.push(t.elapsed().as_micros() as u64);
                    if registered {
                        f.registered += 1;
                    } else {
                        f.simplex += 1;
                    }
                }
                WorkReply::Rejected { .. } => f.refused += 1,
                WorkReply::NotActive { .. } => {
                    // Not the active: it reads nothing more on this connection.
                    f.refused += 1;
                    return Ok(f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_sorted_latencies() {
        let f = Figures { latencies_us: (1..=100).map(|i| i * 1000).collect(), ..Figures::default() };
        assert_eq!(f.latency_ms(0.5), 51.0);
        assert_eq!(f.latency_ms(0.99), 99.0);
        assert_eq!(Figures::default().latency_ms(0.99), 0.0);
    }

    #[test]
    fn units_cycle_open_update_close() {
        assert!(matches!(request("c", 3).op, Operation::Open { ref unit, .. } if unit == "c-u1"));
        assert!(matches!(request("c", 5).op, Operation::Close { .. }));
    }
}
