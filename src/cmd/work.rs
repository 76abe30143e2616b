//! `herald task work QUEUE [--concurrency N] -- COMMAND [ARGS…]`: a worker
//! that runs a command per task.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use herald_client::{Client, Failure, Payload, Progress, Task, Worker};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::{Output, payload_of};
use crate::cli::WorkArgs;

pub async fn run(client: &Client, out: Output, args: WorkArgs) -> anyhow::Result<ExitCode> {
    let lease = crate::cli::duration("lease", &args.lease)?;
    let command = args.command.clone();
    let quiet = args.quiet;
    eprintln!(
        "herald: working on queue {} with {} slot(s): {} (Ctrl-C stops)",
        args.queue,
        args.concurrency,
        command.join(" ")
    );
    Worker::new(client.clone(), args.queue)
        .concurrency(args.concurrency)
        .lease(lease)
        .run(
            move |task, progress| {
                let command = command.clone();
                async move {
                    let (id, attempt) = (task.id.clone(), (task.attempts, task.max_attempts));
                    let started = Instant::now();
                    let outcome = run_one(&command, task, progress).await;
                    if !quiet {
                        println!("{}", ran(out, &id, attempt, &outcome, started.elapsed()));
                    }
                    outcome
                }
            },
            async {
                let _ = tokio::signal::ctrl_c().await;
                eprintln!("herald: stopping after the running tasks");
            },
        )
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// The line printed for a task that ran: `ID succeeded in 12ms`,
/// `ID failed (attempt 1 of 3; to be retried): exit status: 1: it broke in
/// 8ms`, or
/// the same as JSON.
fn ran(
    out: Output,
    id: &str,
    (attempt, of): (u32, u32),
    outcome: &Result<Payload, Failure>,
    took: Duration,
) -> String {
    // Milliseconds are enough for a person, and keep the line short.
    let took = Duration::from_millis(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
    let took_text = humantime::format_duration(took).to_string();
    if out.json {
        let mut v = serde_json::json!({
            "id": id,
            "attempt": attempt,
            "max_attempts": of,
            "outcome": if outcome.is_ok() { "succeeded" } else { "failed" },
            "ms": took.as_millis(),
        });
        if let Err(f) = outcome {
            v["error"] = f.error.clone().into();
            v["retry"] = f.retry.into();
        }
        return v.to_string();
    }
    match outcome {
        Ok(_) => format!("{id} succeeded in {took_text}"),
        Err(f) => {
            let next = if f.retry && attempt < of {
                "; to be retried"
            } else {
                ""
            };
            format!(
                "{id} failed (attempt {attempt} of {of}{next}): {} in {took_text}",
                f.error
            )
        }
    }
}

/// The payload as the command reads it: a JSON string as its text, any
/// other JSON as JSON.
fn stdin_text(payload: &serde_json::Value) -> String {
    match payload {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A stderr line `progress 0.4 some message`, if it is one.
fn progress_line(line: &str) -> Option<(f64, Option<String>)> {
    let rest = line.strip_prefix("progress ")?;
    let (value, message) = match rest.split_once(' ') {
        Some((v, m)) => (v, Some(m.trim().to_owned()).filter(|m| !m.is_empty())),
        None => (rest, None),
    };
    let value: f64 = value.trim().parse().ok()?;
    (0.0..=1.0).contains(&value).then_some((value, message))
}

async fn run_one(command: &[String], task: Task, progress: Progress) -> Result<Payload, Failure> {
    let Some((program, args)) = command.split_first() else {
        return Err(Failure::new("no command to run", false));
    };
    let mut child = Command::new(program)
        .args(args)
        .env("HERALD_TASK_ID", &task.id)
        .env("HERALD_TASK_ATTEMPT", task.attempts.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C typed at the worker stops the
        // worker gracefully instead of killing the task's command.
        .process_group(0)
        .spawn()
        .map_err(|e| Failure::new(format!("cannot start {program}: {e}"), false))?;
    let mut stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let reading = async {
        let mut out = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut out).await;
        }
        out
    };
    let reporting = async {
        let mut last = None;
        if let Some(stderr) = stderr {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match progress_line(&line) {
                    Some((value, message)) => {
                        if let Err(e) = progress.report(Some(value), message.as_deref()).await {
                            eprintln!("herald: reporting progress of {} failed: {e}", task.id);
                        }
                    }
                    None => {
                        eprintln!("{line}");
                        last = Some(line);
                    }
                }
            }
        }
        last
    };
    // Feed stdin while reading stdout and stderr: a command that writes
    // before it has read all its input must not deadlock on full pipes.
    let stdin = child.stdin.take();
    let feeding = async {
        if let Some(mut stdin) = stdin {
            let text = stdin_text(&task.payload);
            // A command that does not read its input is fine.
            let _ = stdin.write_all(text.as_bytes()).await;
        }
    };
    let ((), out, last_line) = tokio::join!(feeding, reading, reporting);
    let status = child
        .wait()
        .await
        .map_err(|e| Failure::new(format!("waiting for {program}: {e}"), true))?;
    if !status.success() {
        let why = last_line.unwrap_or_else(|| format!("{program} failed"));
        return Err(Failure::new(format!("{status}: {why}"), true));
    }
    let text = String::from_utf8_lossy(&out);
    Ok(payload_of(text.trim_end_matches('\n')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_progress_lines() {
        assert_eq!(
            progress_line("progress 0.4 resizing"),
            Some((0.4, Some("resizing".into())))
        );
        assert_eq!(progress_line("progress 1"), Some((1.0, None)));
        assert_eq!(progress_line("progress 2 too much"), None);
        assert_eq!(progress_line("warning: x"), None);
    }
}
