//! The hitless orchestrator: drives a rolling software upgrade of an
//! active/standby pair of QEMU processors (US 7,178,056, Fig. 6).
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | the pair's YAML configuration and its validation |
//! | [`images`] | boot image and per-version app disks, cached by content |
//! | [`accel`] | KVM only where it really works, else TCG |
//! | [`qemu`] | the QEMU command line, as pure functions |
//! | [`process`] | helper processes in their own groups, pid files |
//! | [`qmp`] | QMP queries and actions on each QEMU |
//! | [`channel`] | the vsock channel to each guest agent |
//! | [`rundir`] | the run directory: sockets, logs, state, journal |
//! | [`testbed`] | up, attach, reload, status, down |
//! | [`sim`] | the simulated pair: real agents in-process, no VMs |
//! | [`events`] | the one event stream behind terminal and transcript |
//! | [`procedure`] | Fig. 6 as a state machine: the transition table |
//! | [`upgrade`] | executing the procedure on the pair, journal, fallback, rollback |
//! | [`workload`] | the client that submits work units during the upgrade |
//! | [`load`] | the throughput and ack-latency probe of `make bench` |
//! | [`history`] | invariant checks on the history and the final state |
//! | [`transcript`] | the YAML record of a run |
#![warn(missing_docs)]

pub mod accel;
pub mod channel;
pub mod config;
pub mod events;
pub mod history;
pub mod images;
pub mod load;
pub mod procedure;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod rundir;
pub mod sim;
pub mod testbed;
pub mod transcript;
pub mod upgrade;
pub mod workload;
