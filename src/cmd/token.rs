//! `herald token --secret S [--publish P]… [--subscribe P]… [--ttl 1h] …`:
//! prints an HS256 token for a server run with the same secret.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use herald_server::auth::{Mint, Pattern, Scopes, mint};

use super::Output;
use crate::cli::{TokenArgs, optional_duration};

pub fn run(args: TokenArgs, out: Output) -> anyhow::Result<ExitCode> {
    let spec = spec(&args)?;
    let now = SystemTime::now();
    let token = mint(&args.secret, &spec, now).context("--secret")?;
    if out.json {
        let exp = spec.ttl.and_then(|ttl| now.checked_add(ttl)).map(|exp| {
            exp.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
        println!("{}", serde_json::json!({ "token": token, "exp": exp }));
    } else {
        println!("{token}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The flags as what the token will say, each pattern checked.
fn spec(args: &TokenArgs) -> anyhow::Result<Mint> {
    let patterns = |flag: &str, given: &[String]| -> anyhow::Result<Vec<Pattern>> {
        given
            .iter()
            .map(|p| Pattern::parse(p).with_context(|| format!("--{flag}")))
            .collect()
    };
    Ok(Mint {
        scopes: Scopes {
            publish: patterns("publish", &args.publish)?,
            subscribe: patterns("subscribe", &args.subscribe)?,
            enqueue: patterns("enqueue", &args.enqueue)?,
            work: patterns("work", &args.work)?,
            admin: args.admin,
        },
        sub: args.sub.clone(),
        ttl: optional_duration("ttl", &args.ttl)?,
        issuer: args.issuer.clone(),
        audience: args.audience.clone(),
    })
}
