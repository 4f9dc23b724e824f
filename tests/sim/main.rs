//! The in-process tier: no VMs, seconds. The procedure on the simulated pair
//! (every transition, fault, resume and rollback), two agents driven over
//! loopback, the simulated backend's faults, the command line's
//! bad-input paths (each fails before anything would start), and reports
//! (in headless Chromium) and JUnit XML (read by junitparser).

mod cli;
mod failover;
mod faults;
mod host_pair;
mod procedure;
mod report;
mod scenarios;
mod verdicts;
