//! The agent's role state machine: out-of-service, standby, active, changed
//! only by host commands that carry an epoch. One exhaustive match decides
//! every (role, target) pair; the callers supply the facts it needs.

use hitless_protocol::Role;

/// Why a role change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The command's epoch is not newer than the last one applied (and it is not that same command again).
    #[error("stale command: epoch {got} is not newer than current epoch {current}")]
    StaleEpoch {
        /// Epoch in the command.
        got: u64,
        /// Epoch of the agent.
        current: u64,
    },
    /// The peer is active at the same or a newer epoch: two actives would split the brain.
    #[error("refusing to become active: peer {peer} is active at epoch {peer_epoch} (>= {epoch})")]
    PeerActive {
        /// Peer name.
        peer: String,
        /// Peer's epoch.
        peer_epoch: u64,
        /// Epoch of the command.
        epoch: u64,
    },
    /// A standby that has not completed a step-up would become active without all state.
    #[error("refusing to become active: this standby has not completed a step-up, its state is not current")]
    NotCurrent,
    /// The peer refused to pair (e.g. a feature it lacks is enabled).
    #[error("cannot become standby: {0}")]
    PairingRefused(String),
    /// An armed take-over did not happen (see [`crate::agent::Agent::await_take_over`]).
    #[error("not taken over: {0}")]
    NotTakenOver(String),
    /// A promotion required an update this standby has not applied (the demoted
    /// active acked work alone): promoted, it would step the old active up without it.
    #[error("refusing to become active: updates are applied here up to {seq}, the demoted active's up to {holding}")]
    Lacking {
        /// Last update applied here.
        seq: u64,
        /// The update the promotion required.
        holding: u64,
    },
}

/// The facts a transition depends on.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The peer's name, role and epoch if it said hello.
    pub peer: Option<(String, Role, u64)>,
    /// This standby has completed a step-up and is current.
    pub synced: bool,
    /// Why the peer link refused pairing, if it did.
    pub refused: Option<String>,
    /// The last update applied here.
    pub seq: u64,
    /// A promotion's requirement: the demoted active's last update, which
    /// must be applied here (see [`RoleError::Lacking`]).
    pub holding: Option<u64>,
}

/// Decide whether `from` may become `to` at `epoch` (current epoch `current`).
/// Only a newer epoch may change anything: two orchestrators (or a stale
/// one) can never both be obeyed. The same command again — same epoch, and
/// the role it set — is answered idempotently, so a retry after a lost reply
/// is safe.
pub fn check(from: Role, to: Role, epoch: u64, current: u64, facts: &Facts) -> Result<(), RoleError> {
    if epoch < current || (epoch == current && from != to) {
        return Err(RoleError::StaleEpoch { got: epoch, current });
    }
    let peer_active = |e: u64| match &facts.peer {
        Some((name, Role::Active, pe)) if *pe >= e => {
            Err(RoleError::PeerActive { peer: name.clone(), peer_epoch: *pe, epoch: e })
        }
        _ => Ok(()),
    };
    // Promoted without an update the demoted active acked, it would step that one up without it.
    let holding = || match facts.holding {
        Some(holding) if facts.seq < holding => Err(RoleError::Lacking { seq: facts.seq, holding }),
        _ => Ok(()),
    };
    match (from, to) {
        // Idempotent: the same command again (e.g. a retry) is fine.
        (Role::Active, Role::Active) | (Role::Standby, Role::Standby) | (Role::OutOfService, Role::OutOfService) => {
            Ok(())
        }
        // A fresh start: no standby state to lose.
        (Role::OutOfService, Role::Active) => peer_active(epoch).and_then(|()| holding()),
        (Role::Standby, Role::Active) => {
            peer_active(epoch)?;
            if !facts.synced {
                return Err(RoleError::NotCurrent);
            }
            holding()
        }
        (Role::OutOfService, Role::Standby) | (Role::Active, Role::Standby) => match &facts.refused {
            Some(why) => Err(RoleError::PairingRefused(why.clone())),
            None => Ok(()),
        },
        (Role::Active, Role::OutOfService) | (Role::Standby, Role::OutOfService) => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    const ROLES: [Role; 3] = [Role::OutOfService, Role::Standby, Role::Active];

    #[test]
    fn every_pair_without_obstacles_is_allowed_except_unsynced_promotion() {
        for from in ROLES {
            for to in ROLES {
                let r = check(from, to, 6, 5, &Facts::default());
                if (from, to) == (Role::Standby, Role::Active) {
                    assert_eq!(r, Err(RoleError::NotCurrent));
                } else {
                    assert_eq!(r, Ok(()), "{from} -> {to}");
                }
            }
        }
    }

    #[test]
    fn older_epochs_are_rejected_in_every_pair() {
        for from in ROLES {
            for to in ROLES {
                assert_eq!(check(from, to, 3, 4, &Facts::default()), Err(RoleError::StaleEpoch { got: 3, current: 4 }));
            }
        }
    }

    #[test]
    fn the_same_epoch_repeats_a_command_but_never_changes_a_role() {
        for from in ROLES {
            for to in ROLES {
                let r = check(from, to, 5, 5, &Facts::default());
                if from == to {
                    assert_eq!(r, Ok(()), "a retry of {to} at the same epoch is idempotent");
                } else {
                    assert_eq!(
                        r,
                        Err(RoleError::StaleEpoch { got: 5, current: 5 }),
                        "{from} -> {to} at the same epoch"
                    );
                }
            }
        }
    }

    #[test]
    fn a_promotion_holding_an_update_not_applied_here_is_refused_and_a_retry_once_active_is_not() {
        let facts = |holding| Facts { synced: true, seq: 40, holding: Some(holding), ..Facts::default() };
        for from in [Role::OutOfService, Role::Standby] {
            assert_eq!(check(from, Role::Active, 7, 1, &facts(42)), Err(RoleError::Lacking { seq: 40, holding: 42 }));
            assert_eq!(check(from, Role::Active, 7, 1, &facts(40)), Ok(()));
        }
        assert_eq!(
            check(Role::Active, Role::Active, 7, 7, &facts(42)),
            Ok(()),
            "a retry of a promotion that was obeyed"
        );
    }

    #[test]
    fn no_split_brain() {
        let facts = |pe| Facts { peer: Some(("p121".into(), Role::Active, pe)), synced: true, ..Facts::default() };
        for from in [Role::OutOfService, Role::Standby] {
            assert!(matches!(check(from, Role::Active, 7, 1, &facts(7)), Err(RoleError::PeerActive { .. })));
            assert!(matches!(check(from, Role::Active, 7, 1, &facts(9)), Err(RoleError::PeerActive { .. })));
            // A peer active at an older epoch is stale: it fences itself when it hears of us.
            assert_eq!(check(from, Role::Active, 7, 1, &facts(6)), Ok(()));
        }
        let standby_peer = Facts { peer: Some(("p121".into(), Role::Standby, 9)), synced: true, ..Facts::default() };
        assert_eq!(check(Role::Standby, Role::Active, 10, 2, &standby_peer), Ok(()));
    }

    #[test]
    fn refused_pairing_blocks_standby() {
        let f = Facts { refused: Some("feature x".into()), ..Facts::default() };
        assert!(matches!(check(Role::OutOfService, Role::Standby, 2, 1, &f), Err(RoleError::PairingRefused(_))));
        assert_eq!(check(Role::Standby, Role::OutOfService, 2, 1, &f), Ok(()));
    }
}
