//! `hitless exec`: run a command in the guest for the host and stream its
//! output back over the control connection. The guest has no sshd and no
//! getty; the agent is the one program the host can always reach.

use hitless_protocol::{to_line, ControlReply, OutputStream};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A search path when the agent has none (the kernel starts init without one).
const DEFAULT_PATH: &str = "/sbin:/usr/sbin:/bin:/usr/bin";
/// Output is sent in chunks of at most this many bytes.
const CHUNK: usize = 8 * 1024;

/// Run `argv` for at most `timeout`, writing its output and then how it ended
/// to `w`. The command is killed when it runs out of time, or when the host
/// goes away (`r` closes) before it ends. Returns an error when `w` fails.
pub async fn run<R, W>(argv: Vec<String>, timeout: Duration, r: &mut R, w: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some((program, args)) = argv.split_first() else {
        return send(w, &ControlReply::Error { message: "exec: no command given".into() }).await;
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return send(w, &ControlReply::Error { message: format!("cannot run {program}: {e}") }).await,
    };
    let (tx, mut rx) = mpsc::channel(16);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, OutputStream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, OutputStream::Stderr, tx));
    }
    let deadline = Instant::now() + timeout;
    let mut host = [0u8; 1];
    // Forward output until both pipes close, the time is up, or the host hangs up.
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some((stream, data)) => send(w, &ControlReply::Output { stream, data }).await?,
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => return ended(&mut child, w, true).await,
            // Nothing more is sent on this connection during a command: a read that
            // returns is the host gone. Dropping the child kills it.
            _ = r.read(&mut host) => return Ok(()),
        }
    }
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            let reply = ControlReply::Exited { code: status.code(), signal: status.signal(), timed_out: false };
            send(w, &reply).await
        }
        () = tokio::time::sleep_until(deadline) => ended(&mut child, w, true).await,
        _ = r.read(&mut host) => Ok(()),
    }
}

/// Kill the command (out of time) and say how it ended.
async fn ended<W: AsyncWrite + Unpin>(
    child: &mut tokio::process::Child,
    w: &mut W,
    timed_out: bool,
) -> std::io::Result<()> {
    let _ = child.start_kill();
    let status = child.wait().await?;
    send(w, &ControlReply::Exited { code: status.code(), signal: status.signal(), timed_out }).await
}

/// Read one of the command's outputs in chunks until it closes.
async fn pump<R: AsyncRead + Unpin>(mut from: R, stream: OutputStream, to: mpsc::Sender<(OutputStream, Vec<u8>)>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send((stream, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, reply: &ControlReply) -> std::io::Result<()> {
    let line = to_line(reply).map_err(std::io::Error::other)?;
    w.write_all(&line).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hitless_protocol::from_line;

    /// Run `argv` with a host that stays connected; the replies it got.
    async fn replies(argv: &[&str], timeout: Duration) -> Vec<ControlReply> {
        let (mut host, mut agent_side) = tokio::io::duplex(1 << 20);
        let (mut r, mut w) = tokio::io::split(&mut agent_side);
        let argv = argv.iter().map(|s| s.to_string()).collect();
        run(argv, timeout, &mut r, &mut w).await.unwrap();
        drop((r, w));
        drop(agent_side);
        let mut all = Vec::new();
        host.read_to_end(&mut all).await.unwrap();
        all.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| from_line(l).unwrap()).collect()
    }

    fn output(rs: &[ControlReply], want: OutputStream) -> String {
        let bytes: Vec<u8> = rs
            .iter()
            .filter_map(|r| match r {
                ControlReply::Output { stream, data } if *stream == want => Some(data.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn streams_both_outputs_then_the_exit_code() {
        let rs = replies(&["sh", "-c", "echo out; echo err >&2; exit 3"], Duration::from_secs(10)).await;
        assert_eq!(output(&rs, OutputStream::Stdout), "out\n");
        assert_eq!(output(&rs, OutputStream::Stderr), "err\n");
        assert_eq!(rs.last(), Some(&ControlReply::Exited { code: Some(3), signal: None, timed_out: false }));
    }

    #[tokio::test]
    async fn a_command_out_of_time_is_killed_and_says_so() {
        let rs = replies(&["sleep", "30"], Duration::from_millis(200)).await;
        assert_eq!(rs.last(), Some(&ControlReply::Exited { code: None, signal: Some(9), timed_out: true }));
    }

    #[tokio::test]
    async fn an_unknown_program_is_an_error_that_names_it() {
        let rs = replies(&["no-such-program-here"], Duration::from_secs(5)).await;
        match rs.as_slice() {
            [ControlReply::Error { message }] => assert!(message.contains("no-such-program-here"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_command_is_killed_when_the_host_hangs_up() {
        let (host, mut agent_side) = tokio::io::duplex(1 << 16);
        let (mut r, mut w) = tokio::io::split(&mut agent_side);
        let started = std::time::Instant::now();
        let hang_up = async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(host);
        };
        let argv = vec!["sleep".to_string(), "30".to_string()];
        let (res, ()) = tokio::join!(run(argv, Duration::from_secs(60), &mut r, &mut w), hang_up);
        res.unwrap();
        assert!(started.elapsed() < Duration::from_secs(10), "the command outlived its host");
    }
}
