//! The in-process tier: no VMs, seconds. The procedure on the simulated pair
//! (every transition, fault, resume and rollback), two agents driven over
//! loopback, the simulated backend's faults, and the command line's
//! bad-input paths (each fails before anything would start).

mod cli;
mod failover;
mod faults;
mod host_pair;
mod procedure;
mod scenarios;
mod verdicts;
