//! `hitless repair`: bring a pair back to one active and one current
//! standby after a processor died, hung or was left without a role — outside
//! any upgrade step. A paused machine is resumed; a machine whose agent does
//! not answer is fenced (stopped); if nothing is active, the surviving
//! processor that holds the run-state (the active's standby, current) is
//! promoted with a new epoch; the other is reloaded with the version its
//! partner runs and made standby, with the features its partner has enabled.
//! When no processor holds the run-state (both down, or the survivor never
//! completed a step-up), it says so and changes nothing.

use super::steps::enable_features;
use crate::error::{chain, Error, ProcessorError};
use crate::events::Event;
use crate::health;
use crate::machine::Machines;
use crate::pair::ProcId;
use crate::testbed::Testbed;
use hitless_protocol::{Role, Status};

/// What `repair` did.
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    /// Each action, in order ("nothing to repair" when healthy).
    pub actions: Vec<String>,
}

/// Why `repair` could not restore the pair.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// No processor holds the run-state.
    #[error("nothing holds the run-state: {0}; run `hitless down` and `hitless up` to start over (the work the pair held is lost)")]
    NoSurvivor(String),
}

/// What one processor is, for repair's decisions.
enum Seen {
    /// Its machine does not run (or was just fenced).
    Dead,
    /// Its agent answers.
    Up(Box<Status>),
}

async fn observe(tb: &Testbed, p: ProcId) -> Seen {
    if !tb.alive(p) {
        return Seen::Dead;
    }
    match tb.agents().status(p).await {
        Ok(s) => Seen::Up(Box::new(s)),
        Err(_) => Seen::Dead,
    }
}

/// Restore `tb` to one active and one current standby.
pub async fn repair(tb: &mut Testbed) -> Result<Repaired, Error> {
    let mut done = Repaired::default();
    let problems = health::assess(&tb.status().await);
    if problems.is_empty() {
        done.actions.push("nothing to repair: the pair is healthy".into());
        return Ok(done);
    }
    for p in &problems {
        tb.events().progress(format!("repair: {p}"));
    }
    // Nothing a role change or a reload fixes: the pair must be restarted.
    for full in &problems {
        if let health::Problem::DatabaseFull { active, .. } = full {
            let message = format!("cannot repair: {full}");
            return Err(ProcessorError::Agent { processor: active.clone(), message }.into());
        }
    }
    let mut act = |tb: &Testbed, what: String| {
        tb.events().progress(format!("repair: {what}"));
        done.actions.push(what);
    };
    // A paused machine is whole: resume it first, then look again.
    for p in ProcId::BOTH {
        if tb.machines().run_state(p).await.as_deref() == Some("paused") {
            tb.machines()
                .resume(p)
                .await
                .map_err(|source| ProcessorError::Machine { processor: tb.name(p).into(), source })?;
            act(tb, format!("resumed {}", tb.name(p)));
        }
    }
    // A machine whose agent does not answer cannot be trusted with a role: fence it.
    let mut seen = Vec::new();
    for p in ProcId::BOTH {
        let s = observe(tb, p).await;
        if matches!(s, Seen::Dead) {
            if tb.alive(p) {
                tb.stop(p).await;
                act(tb, format!("fenced {}: its machine ran but its agent did not answer", tb.name(p)));
            } else {
                // Found down: whatever role it had ended with its machine.
                let processor = tb.name(p).to_string();
                tb.events().emit(Event::ProcessorStopped { processor, how: "found down".into() });
            }
        }
        seen.push((p, s));
    }
    let up = |p: ProcId| match &seen[p.index()].1 {
        Seen::Up(s) => Some(s.as_ref()),
        Seen::Dead => None,
    };
    let holds_state =
        |s: &Status| s.hello.role == Role::Active || (s.hello.role == Role::Standby && s.replication.synced);
    // Who serves from now on: the active if there is one (the newer epoch if two), else a current standby.
    let actives: Vec<ProcId> =
        ProcId::BOTH.into_iter().filter(|p| up(*p).is_some_and(|s| s.hello.role == Role::Active)).collect();
    let survivor = match actives.as_slice() {
        [a] => *a,
        [a, b] => {
            let newer = if up(*a).map(|s| s.hello.epoch) >= up(*b).map(|s| s.hello.epoch) { *a } else { *b };
            act(tb, format!("both were active: {} keeps the newer epoch", tb.name(newer)));
            newer
        }
        _ => {
            // Of two, the one that applied more: the other may lack work acked alone
            // (a switchover cut short after the demotion); the first on a tie.
            let candidate = ProcId::BOTH
                .into_iter()
                .filter_map(|p| up(p).filter(|s| holds_state(s)).map(|s| (p, s.replication.seq)))
                .reduce(|a, b| if b.1 > a.1 { b } else { a })
                .map(|(p, _)| p);
            let Some(s) = candidate else {
                let what = ProcId::BOTH
                    .into_iter()
                    .map(|p| match up(p) {
                        None => format!("{} is down", tb.name(p)),
                        Some(s) => format!("{} is {} with no current state", tb.name(p), s.hello.role),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ProcessorError::Agent {
                    processor: tb.name(ProcId::FIRST).into(),
                    message: RepairError::NoSurvivor(what).to_string(),
                }
                .into());
            };
            tb.set_role(s, Role::Active).await?;
            act(tb, format!("promoted {} (it held the run-state as a current standby)", tb.name(s)));
            s
        }
    };
    let other = survivor.other();
    let version = tb.version_of(survivor).to_string();
    let enabled: Vec<String> = up(survivor).map(|s| s.hello.enabled.iter().cloned().collect()).unwrap_or_default();
    let other_ok = up(other).is_some_and(|s| s.hello.version == version) && tb.alive(other);
    if !other_ok {
        if tb.alive(other) {
            tb.set_role(other, Role::OutOfService).await.ok();
        }
        tb.reload(other, &version).await?;
        act(tb, format!("reloaded {} with {version}, the version {} runs", tb.name(other), tb.name(survivor)));
    }
    tb.make_standby(other).await?;
    act(tb, format!("made {} standby for {} (step-up done)", tb.name(other), tb.name(survivor)));
    if !enabled.is_empty() {
        enable_features(tb, &enabled).await.map_err(|e| ProcessorError::Agent {
            processor: tb.name(other).into(),
            message: format!("enabling {} as on {}: {}", enabled.join(", "), tb.name(survivor), chain(&e)),
        })?;
        act(tb, format!("enabled {} on {} as on {}", enabled.join(", "), tb.name(other), tb.name(survivor)));
        // A feature enabled changes the standby's hello: its active steps it up again.
        tb.wait_standby_current(other).await?;
    }
    let left = health::assess(&tb.status().await);
    if let Some(p) = left.first() {
        return Err(ProcessorError::Agent {
            processor: tb.name(survivor).into(),
            message: format!("after repair: {p}"),
        }
        .into());
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
