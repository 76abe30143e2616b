//! `herald task submit|status|cancel`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use herald_client::{Backoff, Client, Update, Wait, WaitOutcome};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Output, arg_or_stdin, describe, payload_of, task_json};
use crate::cli::{SubmitArgs, WaitVia};

/// Exit code of a wait that ran out of time (as `timeout(1)` uses).
const TIMED_OUT: u8 = 124;

pub async fn submit(client: &Client, out: Output, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let text = arg_or_stdin(args.payload).await?;
    let backoff = match args.backoff.as_deref().map(str::trim) {
        None => Backoff::Default,
        Some("none") => Backoff::None,
        Some(base) => Backoff::From(crate::cli::duration("backoff", base)?),
    };
    let task = client
        .enqueue_with(
            &args.queue,
            payload_of(text.trim_end_matches('\n')),
            backoff,
        )
        .await?;
    if !args.wait {
        if out.json {
            println!("{}", task_json(&task));
        } else {
            println!("{}", task.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = match &args.timeout {
        Some(t) => crate::cli::duration("timeout", t)?,
        None => Duration::from_secs(365 * 24 * 3600),
    };
    let how = match args.via {
        WaitVia::Sse => Wait::Sse,
        WaitVia::Ws => Wait::WebSocket,
        WaitVia::LongPoll => Wait::LongPoll { ttl: timeout },
        WaitVia::Poll => {
            let interval = Duration::from_millis(500);
            // One look at the start and one after each interval, the last
            // at the timeout: polls that cover all of it.
            let attempts =
                (timeout.as_millis() / interval.as_millis() + 1).clamp(1, u128::from(u32::MAX));
            Wait::ShortPoll {
                interval,
                max_attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            }
        }
    };
    let bar = progress_bar();
    bar.set_message(format!("{} queued", task.id));
    let waited = tokio::time::timeout(
        timeout,
        client.wait(&task.id, how, |update| match update {
            Update::Position(p) => bar.set_message(format!("queued, position {p}")),
            Update::Progress { progress, message } => {
                if let Some(p) = progress {
                    bar.set_position((p * 1000.0).round() as u64);
                }
                bar.set_message(format!("running {}", message.unwrap_or_default()));
            }
        }),
    )
    .await;
    bar.finish_and_clear();
    let finished = match waited {
        Ok(Ok(WaitOutcome::Finished(task))) => task,
        Ok(Ok(WaitOutcome::TimedOut(_))) | Err(_) => {
            eprintln!("herald: task {} did not finish in time", task.id);
            return Ok(ExitCode::from(TIMED_OUT));
        }
        Ok(Err(e)) => return Err(e.into()),
    };
    if out.json {
        println!("{}", task_json(&finished));
    } else if finished.succeeded() {
        match &finished.result {
            Some(serde_json::Value::String(s)) => println!("{s}"),
            Some(v) => println!("{v}"),
            None => {}
        }
    } else {
        eprintln!("herald: {}", describe(&finished));
    }
    Ok(if finished.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A bar on standard error, drawn only when it is a terminal.
fn progress_bar() -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(1000), target);
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:30}] {percent:>3}% {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub async fn status(client: &Client, out: Output, id: &str) -> anyhow::Result<ExitCode> {
    let task = client.task(id).await?;
    if out.json {
        println!("{}", task_json(&task));
    } else {
        println!("{}", describe(&task));
        if let Some(r) = &task.result {
            println!("result: {r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(client: &Client, out: Output, id: &str) -> anyhow::Result<ExitCode> {
    let task = client.cancel(id).await?;
    if out.json {
        println!("{}", task_json(&task));
    } else if task.status == "cancelled" {
        println!("{} cancelled", task.id);
    } else {
        println!(
            "{} cancel requested (it is running; it stops at its worker's next report)",
            task.id
        );
    }
    Ok(ExitCode::SUCCESS)
}
