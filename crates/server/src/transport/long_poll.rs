//! Long poll: a plan's long poll carried out by the hub's one long-poll
//! loop ([`herald_core::long_poll`]), waiting the way the stack waits, and
//! answered as a short poll would be (`200` with events, or `204` with
//! `Herald-Cursor` at the deadline).

use herald_core::long_poll::{LongPolled, Waiter};
use tokio::time::Instant;

use super::{SubscriptionGauge, poll};
use crate::answer::Whole;
use crate::error::ApiError;
use crate::negotiate::Transport;
use crate::plan::Plan;
use crate::state::AppState;

/// How a long poll ended, for the stack to write.
#[derive(Debug)]
pub enum Polled<A> {
    /// The answer to write: events, the empty `204`, or an error.
    Answer(Whole),
    /// The waiter answered the poll itself.
    Answered(A),
}

/// Carries out the long poll `plan` asks for, waiting the way `waiter`
/// waits (the hub's one long-poll loop, [`herald_core::long_poll`]).
pub async fn run<W: Waiter>(
    state: &AppState,
    plan: &Plan,
    limit: usize,
    deadline: Instant,
    waiter: &mut W,
) -> Polled<W::Answered> {
    let hub = state.hub();
    let polled = match hub.resolve(&plan.topics, &plan.cursor).await {
        // Counted once its position is fixed: a client that sees the count
        // (a test, say) and then publishes gets that event.
        Ok(starts) => {
            let _gauge = SubscriptionGauge::open(Transport::LongPoll);
            hub.long_poll_from(starts, limit, deadline, waiter).await
        }
        Err(e) => Err(e),
    };
    match polled {
        Ok(LongPolled::Answer(answer)) => Polled::Answer(poll::answer(&answer, &plan.headers)),
        Ok(LongPolled::Answered(a)) => Polled::Answered(a),
        Err(e) => Polled::Answer(ApiError::from(e).whole()),
    }
}
