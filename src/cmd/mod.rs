//! The client commands: `pub`, `sub` and `task …`, on `herald-client`;
//! and `token` and `backup`, which need no server.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use herald_client::{Client, Payload, Task};
use tokio::io::AsyncReadExt;

use crate::cli::{Command, TaskCommand};

pub mod backup;
mod publish;
mod subscribe;
mod task;
pub mod token;
mod work;

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// One JSON object per line instead of human text.
    pub json: bool,
}

pub async fn run(client: Client, out: Output, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(_) | Command::Token(_) | Command::Backup(_) => not_a_client_command(),
        Command::Publish(args) => publish::run(&client, out, args).await,
        Command::Subscribe(args) => subscribe::run(&client, out, args).await,
        Command::Task(TaskCommand::Submit(args)) => task::submit(&client, out, args).await,
        Command::Task(TaskCommand::Status { id }) => task::status(&client, out, &id).await,
        Command::Task(TaskCommand::Cancel { id }) => task::cancel(&client, out, &id).await,
        Command::Task(TaskCommand::Work(args)) => work::run(&client, out, args).await,
    }
}

fn not_a_client_command() -> anyhow::Result<ExitCode> {
    anyhow::bail!("serve, token and backup are not client commands")
}

/// The argument, or standard input when it is `-` or absent.
pub async fn arg_or_stdin(arg: Option<String>) -> anyhow::Result<String> {
    match arg.as_deref() {
        Some("-") | None => {
            if std::io::stdin().is_terminal() && arg.is_none() {
                eprintln!("(reading from standard input; end with Ctrl-D)");
            }
            let mut text = String::new();
            tokio::io::stdin()
                .read_to_string(&mut text)
                .await
                .context("reading standard input")?;
            Ok(text)
        }
        Some(text) => Ok(text.to_owned()),
    }
}

/// JSON when the text is JSON, else the text itself.
pub fn payload_of(text: &str) -> Payload {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => Payload::Json(v),
        Err(_) => Payload::Text(text.to_owned()),
    }
}

/// A task on one line for people.
pub fn describe(task: &Task) -> String {
    let mut line = format!("{} {}", task.id, task.status);
    if let Some(p) = task.position {
        line.push_str(&format!(" (position {p})"));
    }
    if let Some(p) = task.progress {
        line.push_str(&format!(" {:.0}%", p * 100.0));
    }
    if let Some(m) = &task.message {
        line.push_str(&format!(" {m}"));
    }
    if let Some(e) = &task.error {
        line.push_str(&format!(" error: {e}"));
    }
    line
}

/// The task as JSON, the fields the client knows.
pub fn task_json(task: &Task) -> serde_json::Value {
    serde_json::to_value(task).unwrap_or_default()
}
