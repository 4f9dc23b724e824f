//! The hitless orchestrator: drives a rolling software upgrade of an
//! active/standby pair of processors (US 7,178,056, Fig. 6) — QEMU guests or
//! the simulated pair — under a live workload, and checks the invariants.
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | the pair's YAML configuration, validated; names resolved to [`pair::ProcId`] |
//! | [`pair`] | typed processor ids and the two-slot [`pair::Pair`] |
//! | [`platform`] | where processors run: QEMU (KVM or TCG, vsock transport) or simulated |
//! | [`images`] | boot image and per-version app disks from the recipe in `images/`, cached |
//! | [`machine`] | the backend: start, stop, kill, pause, cut the link — on QEMU and in-process |
//! | [`process`] | helper processes in their own groups, pid files |
//! | [`channel`] | the host's channel to each agent (vsock or loopback TCP) |
//! | [`agents`] | calls to the agents: status, roles with epochs, evaluation; the standby waits |
//! | [`testbed`] | up, attach, reload, status, down — once, over the backend |
//! | [`health`] | whether a pair is healthy, from what `status` observed |
//! | [`rundir`] | the run directory: sockets, logs, state, journal |
//! | [`lock`] | one orchestrator per pair: the run directory's `flock` |
//! | [`faults`] | the fault catalogue, its triggers, injecting faults during a run |
//! | [`procedure`] | Fig. 6: the transition table, the journal, the loop that runs the steps |
//! | [`scenario`] | scenario files, running them on fresh pairs, chaos draws from a seed |
//! | [`workload`] | the client that submits work units during the upgrade |
//! | [`history`] | what the workload did, as a history |
//! | [`invariants`] | the checks over the history and the final state, as pure functions |
//! | [`events`] | the one event stream behind terminal, transcript and tests |
//! | [`transcript`] | the YAML record of a run |
//! | [`report`] | a run's transcript as one self-contained HTML page; the index of a scenario run |
//! | [`load`] | the throughput and ack-latency probe of `make bench` |
//! | [`error`] | errors by who must act, and the exit codes |
//! | [`wait`] | the one bounded wait, and the timeouts |

pub mod agents;
pub mod channel;
pub mod config;
pub mod error;
pub mod events;
pub mod faults;
pub mod health;
pub mod history;
pub mod images;
pub mod invariants;
pub mod load;
pub mod lock;
pub mod machine;
pub mod pair;
pub mod platform;
pub mod procedure;
pub mod process;
pub mod report;
pub mod rundir;
pub mod scenario;
pub mod testbed;
pub mod transcript;
pub mod wait;
pub mod workload;
