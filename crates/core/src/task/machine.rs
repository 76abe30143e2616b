//! Every task transition as a pure function of the task, the request and
//! the time. Stores load a task, ask this module what to do, and save the
//! new task together with the event it emits — atomically.

use super::{Lease, NewTask, Payload, Status, Task, TaskError};

/// An event a transition emits on the task's topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// `progress`, `done` or `error`.
    pub kind: &'static str,
    pub data: String,
}

/// What a store must do after asking the machine: save `task` (if some) and
/// append `emit` (if some), then answer the caller with `answer`.
#[derive(Debug, Clone)]
pub struct Decision {
    pub task: Option<Task>,
    pub emit: Option<Emit>,
    pub answer: Result<(), TaskError>,
}

impl Decision {
    fn refuse(why: impl Into<String>) -> Decision {
        Decision {
            task: None,
            emit: None,
            answer: Err(TaskError::Conflict(why.into())),
        }
    }

    fn unchanged() -> Decision {
        Decision {
            task: None,
            emit: None,
            answer: Ok(()),
        }
    }

    fn save(task: Task, emit: Option<Emit>) -> Decision {
        Decision {
            task: Some(task),
            emit,
            answer: Ok(()),
        }
    }
}

/// A freshly enqueued task.
pub fn enqueue(new: NewTask, seq: u64, now: u64) -> Task {
    Task {
        id: new.id,
        queue: new.queue.as_str().to_owned(),
        seq,
        status: Status::Queued,
        payload: new.payload,
        progress: None,
        message: None,
        result: None,
        error: None,
        attempts: 0,
        max_attempts: new.max_attempts.max(1),
        created_ms: now,
        updated_ms: now,
        started_ms: None,
        finished_ms: None,
        lease: None,
        cancel_requested: false,
        idempotency_key: new.idempotency_key,
        backoff: new.backoff,
        available_ms: None,
    }
}

/// Whether a queued task may be handed to a worker at `now`: every store
/// asks this, so none hands out a task before its backoff has passed.
pub fn claimable(task: &Task, now: u64) -> bool {
    task.status == Status::Queued && task.waiting_until(now).is_none()
}

fn lease_ms(secs: f64) -> u64 {
    (secs * 1000.0).round().max(1.0) as u64
}

/// Hands a queued task to a worker for `lease_secs`.
pub fn claim(task: &Task, now: u64, lease_secs: f64) -> Task {
    let mut t = task.clone();
    t.status = Status::Running;
    t.attempts += 1;
    t.started_ms = Some(now);
    t.updated_ms = now;
    t.available_ms = None;
    t.lease = Some(lease(now, lease_secs));
    t
}

/// The fresh lease a claim at `now` hands out (a store that claims in one
/// step of its own, as Redis does, takes it from here).
pub fn lease(now: u64, lease_secs: f64) -> Lease {
    Lease {
        token: uuid::Uuid::new_v4().simple().to_string(),
        expires_ms: now + lease_ms(lease_secs),
        secs: lease_secs,
    }
}

fn finish(mut t: Task, status: Status, now: u64) -> (Task, Emit) {
    t.status = status;
    t.updated_ms = now;
    t.finished_ms = Some(now);
    let kind = if status == Status::Succeeded {
        "done"
    } else {
        "error"
    };
    let data = super::json::into_string(t.to_json_bytes(None));
    (t, Emit { kind, data })
}

/// Checks that the caller may act on a running task: a live lease, and its
/// token. A cancel request ends the task here. The refusal
/// is the whole decision, returned by value once per call.
#[allow(clippy::result_large_err)]
fn holder(task: &Task, token: Option<&str>, now: u64) -> Result<(), Decision> {
    let Some(lease) = task
        .lease
        .as_ref()
        .filter(|_| task.status == Status::Running)
    else {
        return Err(Decision::refuse(format!(
            "the task is {}, not running",
            task.status.as_str()
        )));
    };
    // Fencing: only the current claim's token moves the task, so a worker
    // whose lease ran out cannot overwrite the work of the one holding the
    // task now.
    match token {
        None => {
            return Err(Decision::refuse(
                "Herald-Lease is required: the token of the claim that holds the task",
            ));
        }
        Some(t) if t != lease.token => {
            return Err(Decision::refuse(
                "the lease was lost: another worker holds the task",
            ));
        }
        Some(_) => {}
    }
    if lease.expires_ms <= now {
        return Err(Decision::refuse("the lease ran out"));
    }
    if task.cancel_requested {
        let (t, emit) = finish(task.clone(), Status::Cancelled, now);
        return Err(Decision {
            task: Some(t),
            emit: Some(emit),
            answer: Err(TaskError::Conflict("the task was cancelled".into())),
        });
    }
    Ok(())
}

/// Whether `token` names the lease under which the task last ran.
fn was_holder(task: &Task, token: Option<&str>) -> bool {
    matches!((token, &task.lease), (Some(t), Some(l)) if t == l.token)
}

/// A progress report: records it, extends the lease, emits `progress`.
pub fn progress(
    task: &Task,
    token: Option<&str>,
    progress: Option<f64>,
    message: Option<String>,
    now: u64,
) -> Decision {
    if let Err(d) = holder(task, token, now) {
        return d;
    }
    let mut t = task.clone();
    t.progress = progress;
    t.message = message;
    t.updated_ms = now;
    if let Some(lease) = t.lease.as_mut() {
        lease.expires_ms = now + lease_ms(lease.secs);
    }
    let data = super::json::progress_json(t.progress, t.message.as_deref());
    Decision::save(
        t,
        Some(Emit {
            kind: "progress",
            data,
        }),
    )
}

/// Success, with the worker's result. Repeating it with the same lease
/// token is answered as before and changes nothing.
pub fn complete(task: &Task, token: Option<&str>, result: Payload, now: u64) -> Decision {
    if task.status == Status::Succeeded && was_holder(task, token) {
        return Decision::unchanged();
    }
    if let Err(d) = holder(task, token, now) {
        return d;
    }
    let mut t = task.clone();
    t.result = Some(result);
    t.progress = Some(1.0);
    let (t, emit) = finish(t, Status::Succeeded, now);
    Decision::save(t, Some(emit))
}

/// Failure: queued again when `retry` and attempts are left, else failed.
/// Repeating it with the same lease token changes nothing.
pub fn fail(task: &Task, token: Option<&str>, error: String, retry: bool, now: u64) -> Decision {
    let already = matches!(task.status, Status::Failed | Status::Queued) && was_holder(task, token);
    if already {
        return Decision::unchanged();
    }
    if let Err(d) = holder(task, token, now) {
        return d;
    }
    let mut t = task.clone();
    t.error = Some(error);
    if retry && t.attempts < t.max_attempts {
        requeue(&mut t, now);
        return Decision::save(t, None);
    }
    let (t, emit) = finish(t, Status::Failed, now);
    Decision::save(t, Some(emit))
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// It was queued and is now cancelled (`200`).
    Cancelled,
    /// It is running; it ends cancelled at the worker's next call or when
    /// its lease runs out (`202`).
    Requested,
}

/// Cancels a queued task at once, a running one at its worker's next call.
pub fn cancel(task: &Task, now: u64) -> (Decision, Option<Cancel>) {
    match task.status {
        Status::Queued => {
            let (t, emit) = finish(task.clone(), Status::Cancelled, now);
            (Decision::save(t, Some(emit)), Some(Cancel::Cancelled))
        }
        Status::Running => {
            let mut t = task.clone();
            t.cancel_requested = true;
            t.updated_ms = now;
            (Decision::save(t, None), Some(Cancel::Requested))
        }
        finished => (
            Decision::refuse(format!("the task is already {}", finished.as_str())),
            None,
        ),
    }
}

/// A running task whose lease has run out: cancelled if that was asked,
/// failed if no attempts are left, else queued again (at-least-once).
pub fn expire(task: &Task, now: u64) -> Option<Decision> {
    let lease = task.lease.as_ref()?;
    if task.status != Status::Running || lease.expires_ms > now {
        return None;
    }
    let mut t = task.clone();
    if t.cancel_requested {
        let (t, emit) = finish(t, Status::Cancelled, now);
        return Some(Decision::save(t, Some(emit)));
    }
    if t.attempts >= t.max_attempts {
        t.error = Some(format!(
            "the worker's lease ran out on the last of {} attempts",
            t.max_attempts
        ));
        let (t, emit) = finish(t, Status::Failed, now);
        return Some(Decision::save(t, Some(emit)));
    }
    requeue(&mut t, now);
    t.lease = None;
    Some(Decision::save(t, None))
}

/// Back in the queue for another attempt: the last attempt's progress no
/// longer applies (its `error`, if any, is kept as the reason for the retry).
/// It waits out its backoff first, longer after each attempt, so a task that
/// fails at once does not spin through its attempts (and a worker that
/// crashed on it gets time to come back).
fn requeue(t: &mut Task, now: u64) {
    t.status = Status::Queued;
    t.updated_ms = now;
    t.progress = None;
    t.message = None;
    t.started_ms = None;
    let delay = t.backoff.delay_ms(t.attempts);
    t.available_ms = (delay > 0).then(|| now + delay);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::Topic;
    use crate::task::{Backoff, TaskId};

    fn task() -> Task {
        let new = NewTask {
            id: TaskId::new(),
            queue: Topic::new("q").unwrap(),
            payload: Payload::Text("p".into()),
            max_attempts: 2,
            idempotency_key: None,
            backoff: Backoff::DEFAULT,
        };
        enqueue(new, 1, 1000)
    }

    fn with_backoff(backoff: Backoff, max_attempts: u32) -> Task {
        Task {
            backoff,
            max_attempts,
            ..task()
        }
    }

    /// Claims and fails `t` at `now` (with retry); the task queued again.
    fn claim_and_fail(t: &Task, now: u64) -> Task {
        let running = claim(t, now, 10.0);
        let tok = token(&running);
        let d = fail(&running, Some(&tok), "boom".into(), true, now + 10);
        d.task.unwrap()
    }

    #[test]
    fn a_retry_waits_longer_after_each_attempt() {
        let mut t = with_backoff(Backoff::DEFAULT, 10);
        let mut waits = Vec::new();
        for _ in 0..3 {
            let now = t.available_ms.unwrap_or(1000);
            assert!(claimable(&t, now));
            t = claim_and_fail(&t, now);
            let at = t.available_ms.unwrap();
            waits.push(at - t.updated_ms);
            assert!(!claimable(&t, at - 1), "not a ms early");
            assert!(claimable(&t, at));
            assert_eq!(t.waiting_until(at - 1), Some(at));
        }
        assert_eq!(waits, [1000, 2000, 4000]);
        assert_eq!(
            claim(&t, 99_999, 1.0).available_ms,
            None,
            "claimed: no wait"
        );
    }

    #[test]
    fn the_wait_is_capped() {
        let mut t = with_backoff(Backoff::DEFAULT, 20);
        t.attempts = 12;
        let t = claim_and_fail(&t, 5000);
        assert_eq!(t.available_ms, Some(5010 + Backoff::CAP_MS));
    }

    #[test]
    fn no_backoff_and_a_custom_base() {
        let t = claim_and_fail(&with_backoff(Backoff::NONE, 3), 5000);
        assert_eq!((t.status, t.available_ms), (Status::Queued, None));
        assert!(claimable(&t, 5010));
        let base = "200ms".parse().unwrap();
        let t = claim_and_fail(&with_backoff(base, 3), 5000);
        assert_eq!(t.available_ms, Some(5210));
        let t = claim_and_fail(&t, 6000);
        assert_eq!(t.available_ms, Some(6410));
    }

    #[test]
    fn a_lease_that_runs_out_backs_off_too() {
        let first = claim(&with_backoff("300ms".parse().unwrap(), 3), 1000, 1.0);
        let requeued = expire(&first, 2000).unwrap().task.unwrap();
        assert_eq!(requeued.available_ms, Some(2300));
        assert!(!claimable(&requeued, 2299));
    }

    fn token(t: &Task) -> String {
        t.lease.as_ref().unwrap().token.clone()
    }

    #[test]
    fn only_the_current_claims_token_moves_a_running_task() {
        let running = claim(&task(), 1000, 10.0);
        let tok = token(&running);
        for t in [None, Some("an earlier claim")] {
            let p = progress(&running, t, Some(0.5), None, 2000);
            let c = complete(&running, t, Payload::Text("r".into()), 2000);
            let f = fail(&running, t, "e".into(), true, 2000);
            for d in [p, c, f] {
                assert!(matches!(d.answer, Err(TaskError::Conflict(_))), "{t:?}");
                assert!(d.task.is_none() && d.emit.is_none(), "nothing changes");
            }
        }
        assert!(
            progress(&running, Some(&tok), None, None, 2000)
                .answer
                .is_ok()
        );
    }

    #[test]
    fn claim_progress_complete_and_repeat() {
        let running = claim(&task(), 1000, 10.0);
        assert_eq!((running.status, running.attempts), (Status::Running, 1));
        let tok = token(&running);
        let d = progress(&running, Some(&tok), Some(0.5), Some("half".into()), 5000);
        let running = d.task.unwrap();
        assert_eq!(
            running.lease.as_ref().unwrap().expires_ms,
            15_000,
            "progress extends the lease"
        );
        assert_eq!(d.emit.unwrap().kind, "progress");
        let d = complete(&running, Some(&tok), Payload::Text("r".into()), 6000);
        let done = d.task.unwrap();
        assert_eq!(done.status, Status::Succeeded);
        assert_eq!(d.emit.unwrap().kind, "done");
        let again = complete(&done, Some(&tok), Payload::Text("r".into()), 7000);
        assert!(
            again.answer.is_ok() && again.task.is_none(),
            "idempotent for the holder"
        );
        assert!(
            complete(&done, Some("other"), Payload::Text("r".into()), 7000)
                .answer
                .is_err()
        );
    }

    #[test]
    fn a_lost_lease_is_refused() {
        let running = claim(&task(), 1000, 1.0);
        assert!(
            progress(&running, Some("not-mine"), None, None, 1500)
                .answer
                .is_err()
        );
        assert!(
            complete(&running, None, Payload::Text("r".into()), 2500)
                .answer
                .is_err(),
            "ran out"
        );
    }

    #[test]
    fn expiry_requeues_until_attempts_are_spent() {
        let first = claim(&task(), 1000, 1.0);
        assert!(expire(&first, 1500).is_none());
        let requeued = expire(&first, 2000).unwrap().task.unwrap();
        assert_eq!(requeued.status, Status::Queued);
        let second = claim(&requeued, 3000, 1.0);
        let d = expire(&second, 9000).unwrap();
        assert_eq!(d.task.unwrap().status, Status::Failed);
        assert_eq!(d.emit.unwrap().kind, "error");
    }

    #[test]
    fn fail_with_retry_then_without() {
        let running = claim(&task(), 1000, 10.0);
        let tok = token(&running);
        let queued = fail(&running, Some(&tok), "boom".into(), true, 2000)
            .task
            .unwrap();
        assert_eq!(queued.status, Status::Queued);
        assert!(
            fail(&queued, Some(&tok), "boom".into(), true, 2100)
                .answer
                .is_ok(),
            "repeat"
        );
        let running = claim(&queued, 3000, 10.0);
        let tok = token(&running);
        let failed = fail(&running, Some(&tok), "boom".into(), true, 4000)
            .task
            .unwrap();
        assert_eq!(failed.status, Status::Failed, "no attempts left");
    }

    #[test]
    fn cancel_queued_running_and_finished() {
        let (d, how) = cancel(&task(), 1000);
        assert_eq!(how, Some(Cancel::Cancelled));
        let cancelled = d.task.unwrap();
        assert_eq!(cancelled.status, Status::Cancelled);
        assert!(cancel(&cancelled, 1000).0.answer.is_err());
        let running = claim(&task(), 1000, 10.0);
        let (d, how) = cancel(&running, 1100);
        assert_eq!(how, Some(Cancel::Requested));
        let asked = d.task.unwrap();
        let tok = token(&asked);
        let d = progress(&asked, Some(&tok), None, None, 1200);
        assert!(d.answer.is_err(), "the worker hears 409");
        assert_eq!(
            d.task.unwrap().status,
            Status::Cancelled,
            "and the task ends cancelled"
        );
    }
}
