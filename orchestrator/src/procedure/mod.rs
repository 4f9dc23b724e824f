//! The rolling-upgrade procedure of US 7,178,056 Fig. 6 (steps 200–207 and
//! the fallback):
//!
//! | module | concern |
//! |---|---|
//! | [`table`] | the state machine: which step follows which outcome (one exhaustive match) |
//! | [`journal`] | the plan, the journal written around each step, where `--resume` goes on |
//! | [`preflight`] | the checks before anything leaves service |
//! | [`repair`] | back to one active and one current standby after a processor died |
//! | `run` | the one loop that drives steps for upgrade, resume and rollback; the report |
//! | `steps` | what each step does to the pair, the evaluation and the fallback |
//! | [`watch`] | noticing that the active is lost, for an unplanned failover |

pub mod journal;
pub mod preflight;
pub mod repair;
mod run;
mod steps;
pub mod table;
#[cfg(test)]
pub(crate) mod test_pair;
pub mod watch;

pub use journal::{describe_plan, plan, read_journal, resume_step, Journal, Plan};
pub use preflight::preflight;
pub use repair::repair;
pub use run::{rollback, upgrade, upgrade_with, Cancel, Canceller, Options, Report};
pub use steps::enable_features;
pub use table::{next, End, Outcome, Step, ALL_OUTCOMES, ALL_STEPS};
