//! Every wait of the orchestrator goes through [`wait_until`]: bounded, with
//! named [`Timeouts`] that scale with how fast the processors run, and a
//! probe that can end the wait early with an error (the process waited for died).

use crate::platform::Platform;
use std::time::{Duration, Instant};

/// Named timeouts; TCG is slower than KVM, so they scale with the platform.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a processor's start to its agent answering.
    pub boot: Duration,
    /// One control request.
    pub request: Duration,
    /// A standby's step-up until the active sees it current.
    pub stepup: Duration,
    /// How many times slower than native the processors run.
    pub slowdown: u32,
}

impl Timeouts {
    /// Timeouts for processors running on `platform`.
    pub fn for_platform(platform: Platform) -> Self {
        let k = platform.slowdown();
        Timeouts {
            boot: Duration::from_secs(20) * k,
            request: Duration::from_secs(10) * k,
            stepup: Duration::from_secs(10) * k,
            slowdown: k,
        }
    }
}

/// How often boot waits look (console, sockets).
pub const BOOT_POLL: Duration = Duration::from_millis(10);
/// How often replication waits ask the agents.
pub const STATUS_POLL: Duration = Duration::from_millis(20);

/// Poll `probe` every `every` until it yields `Some`, or fails, or `timeout`
/// passes (then the error is `expired()`).
pub async fn wait_until<T, E>(
    timeout: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<Option<T>, E>,
    expired: impl FnOnce() -> E,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(expired());
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_by_value_by_error_or_by_its_deadline() {
        let mut n = 0;
        let got: Result<u32, &str> = wait_until(
            Duration::from_secs(1),
            Duration::ZERO,
            async || {
                n += 1;
                Ok((n == 3).then_some(n))
            },
            || "expired",
        )
        .await;
        assert_eq!(got, Ok(3));
        let failed: Result<(), &str> =
            wait_until(Duration::from_secs(1), Duration::ZERO, async || Err("died"), || "x").await;
        assert_eq!(failed, Err("died"));
        let t = Instant::now();
        let expired: Result<(), &str> =
            wait_until(Duration::from_millis(30), Duration::from_millis(5), async || Ok(None), || "expired").await;
        assert_eq!(expired, Err("expired"));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }
}
