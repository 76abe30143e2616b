//! A long poll of one topic on the direct path: read the store; if nothing
//! is there, park in the topic's lot (see [`super::park`]) until the lot's
//! task writes the answer, the timeout passes (`204`), the client leaves or
//! the server stops (`204`).
//!
//! Same answers as [`crate::transport::long_poll`], which serves long polls
//! of several topics and those that come through hyper.

use std::sync::Arc;

use bytes::BytesMut;
use herald_core::cursor::Start;
use herald_core::{CursorInput, EventId, PollAnswer, Topic};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Reply;
use super::lot::{Lots, Refused};
use super::park::{Delivery, Place, Polls, park};
use crate::error::ApiError;
use crate::negotiate::Transport;
use crate::query::Query;
use crate::state::AppState;
use crate::transport::SubscriptionGauge;
use crate::transport::long_poll::timeout;
use crate::transport::poll::{limit, to_response};

/// How a parked poll's wait ended.
enum Woke {
    Delivered(Delivery),
    /// Timeout or shutdown: answer `204` with the cursor.
    Empty,
    Gone,
}

/// Answers a long poll of `topic`; the error is the client's answer too.
pub async fn respond(
    state: &AppState,
    tcp: &Arc<TcpStream>,
    buf: &mut BytesMut,
    topic: Topic,
    cursor: &CursorInput,
    query: &Query,
    http10: bool,
) -> Result<Reply, ApiError> {
    let limit = limit(query)?;
    let deadline = Instant::now() + timeout(state, query)?;
    let _gauge = SubscriptionGauge::open(Transport::LongPoll);
    let hub = state.hub();
    // Joined before the first read: see `park`.
    let mut member = Lots::<Polls>::join(state, &topic);
    let start = match cursor.start_for(&topic) {
        Start::Head => Start::After(hub.store().head(&topic).await?),
        other => other,
    };
    let mut starts = [(topic.clone(), start)];
    let mut gap = false;
    loop {
        let answer = hub.poll_at(&starts, limit).await?;
        gap |= answer.gap;
        if !answer.events.is_empty() {
            return Ok(Reply::Whole(to_response(&PollAnswer { gap, ..answer })));
        }
        let after = answer.next.get(&topic).unwrap_or(EventId::START);
        starts[0].1 = Start::After(after);
        let place = Place {
            after,
            limit,
            gap,
            http10,
        };
        let mut ticket = match park(&member, place, tcp) {
            Ok(ticket) => ticket,
            Err(Refused::Moved) => {
                // Read again, but let the store catch up with the ring
                // first and mind the deadline.
                tokio::task::yield_now().await;
                if Instant::now() >= deadline {
                    return Ok(nothing(gap, answer));
                }
                continue;
            }
            Err(Refused::Closed) => {
                member = Lots::join(state, &topic);
                continue;
            }
        };
        let woke = tokio::select! {
            delivery = ticket.delivered() => Woke::Delivered(delivery),
            () = tokio::time::sleep_until(deadline) => Woke::Empty,
            () = state.shutdown().cancelled() => Woke::Empty,
            () = super::client_gone(tcp, buf) => Woke::Gone,
        };
        let delivery = match woke {
            Woke::Delivered(delivery) => delivery,
            woke => match ticket.leave().await {
                // The lot's task answered at the same moment.
                Some(delivery) => delivery,
                None if matches!(woke, Woke::Gone) => return Ok(Reply::Gone),
                None => return Ok(nothing(gap, answer)),
            },
        };
        match delivery {
            Delivery::Written(rest) => return Ok(Reply::Written(rest)),
            Delivery::Failed => return Ok(Reply::Gone),
            Delivery::Reread => member = Lots::join(state, &topic),
        }
    }
}

/// `204` with the cursor the poll waited at.
fn nothing(gap: bool, answer: PollAnswer) -> Reply {
    Reply::Whole(to_response(&PollAnswer { gap, ..answer }))
}
