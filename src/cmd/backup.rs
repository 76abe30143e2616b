//! `herald backup [--store file:DIR] FILE`: a consistent copy of the
//! embedded database, made while the server goes on writing.

use std::path::PathBuf;
use std::process::ExitCode;

use herald_core::store::sqlite::backup::backup;

use super::Output;
use crate::cli::{BackupArgs, StoreChoice};

pub fn run(args: &BackupArgs, out: Output) -> anyhow::Result<ExitCode> {
    let dir = data_dir(&args.store)?;
    let made = backup(&dir, &args.file)?;
    if out.json {
        println!(
            "{}",
            serde_json::json!({
                "source": made.source.display().to_string(),
                "backup": made.target.display().to_string(),
                "bytes": made.bytes,
                "events": made.events,
                "tasks": made.tasks,
            })
        );
    } else {
        println!(
            "{} → {}: {} bytes, {} events, {} tasks (checked)",
            made.source.display(),
            made.target.display(),
            made.bytes,
            made.events,
            made.tasks
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The data directory `--store` names: `file:DIR`, or a bare directory.
fn data_dir(store: &str) -> anyhow::Result<PathBuf> {
    let text = store.trim();
    let uri = if text == "memory" || text.contains(':') {
        text.to_owned()
    } else {
        format!("file:{text}")
    };
    match StoreChoice::parse(&uri, None)? {
        StoreChoice::File { dir, .. } => Ok(dir),
        StoreChoice::Memory => {
            anyhow::bail!("--store memory keeps nothing on disk: there is nothing to back up")
        }
        StoreChoice::Redis { .. } => anyhow::bail!(
            "herald backup copies the embedded store; back up Redis with its own tools (BGSAVE, or its append-only file)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_a_data_directory() {
        assert_eq!(data_dir("file:./d").unwrap(), PathBuf::from("./d"));
        assert_eq!(
            data_dir("/var/lib/herald").unwrap(),
            PathBuf::from("/var/lib/herald")
        );
        assert!(
            data_dir("memory")
                .unwrap_err()
                .to_string()
                .contains("nothing to back up")
        );
        assert!(
            data_dir("redis://h:6379")
                .unwrap_err()
                .to_string()
                .contains("Redis")
        );
    }
}
