//! The `herald` binary: the server (`herald serve`) and the command line
//! for people and scripts (`herald pub`, `sub`, `task …`, `token`,
//! `backup`).

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd;
mod serve;

use cli::{Cli, Command};

/// mimalloc rather than glibc's malloc: a publish allocates on the runtime's
/// thread and frees on the store's writer thread (and back), and glibc's
/// per-thread arenas made malloc and free ~10% of a durable publish's
/// profile. With mimalloc, 64 durable publishers went from 41–48k to
/// 56–58k events/s; an idle SSE subscriber costs ~120 bytes more
/// (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            // One clear line with every cause, not a backtrace.
            eprintln!("herald: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?;
    match cli.command {
        Command::Serve(args) => {
            let config = args.validate()?;
            init_logs(config.json_logs, "info");
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            runtime.block_on(serve::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(args) => cmd::token::run(args, cmd::Output { json: cli.json }),
        Command::Backup(args) => cmd::backup::run(&args, cmd::Output { json: cli.json }),
        command => {
            init_logs(false, "warn");
            let mut client = herald_client::Client::new(cli.url.clone())?;
            if let Some(token) = cli.token.as_deref().filter(|t| !t.trim().is_empty()) {
                client = client.with_token(token)?;
            }
            let out = cmd::Output { json: cli.json };
            runtime.block_on(cmd::run(client, out, command))
        }
    }
}

fn init_logs(json: bool, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal: a log file or a journal
    // would keep the escape codes as text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
