//! Two agents joined both ways by an in-memory link: the warm-up's private
//! pair and the agents' unit tests. Each user delivers the queued link
//! messages its own way (the warm-up through the wire codec, the tests with
//! losses); this holds the ends.

use super::{Agent, ReplyTx};
use hitless_protocol::{LinkMsg, WorkReply};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub(crate) struct Joined {
    pub a: Agent,
    pub b: Agent,
    /// What `a` sent to `b`, not yet delivered.
    pub to_b: UnboundedReceiver<LinkMsg>,
    /// What `b` sent to `a`, not yet delivered.
    pub to_a: UnboundedReceiver<LinkMsg>,
    /// Replies to work requests given `reply_tx`.
    pub replies: UnboundedReceiver<WorkReply>,
    pub reply_tx: ReplyTx,
    /// `a`'s end of the link (for `link_down`).
    #[cfg_attr(not(test), allow(dead_code))]
    pub a_conn: u64,
}

impl Joined {
    /// `a` and `b`, the link up on both (their hellos queued).
    pub fn new(a: Agent, b: Agent) -> Joined {
        let (ta, to_b) = unbounded_channel();
        let (tb, to_a) = unbounded_channel();
        let a_conn = a.link_up(ta);
        b.link_up(tb);
        let (reply_tx, replies) = unbounded_channel();
        Joined { a, b, to_b, to_a, replies, reply_tx, a_conn }
    }
}
