//! The VM tier: real QEMU guests (TCG here, KVM where it works), one test at
//! a time — two guests already fill two cores under TCG. Every test tears
//! its pair down even when it fails, and prints the serial consoles then.

mod scenarios;
mod testbed;
mod upgrade;
mod verdicts;
