//! `cfsmount verity enable|measure|digest FILE...`: fs-verity on files ([`crate::fsverity`]).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::fsverity::{digest_path, enable_path, measure_path, to_hex, VerityError};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Command {
    /// Enable fs-verity (SHA-256, 4 KiB blocks) on each FILE; already enabled counts as success.
    Enable {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the kernel's fs-verity digest of each FILE as `sha256:HEX FILE`.
    Measure {
        /// Print only the hex digest.
        #[arg(long)]
        compact: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compute each FILE's fs-verity digest in userspace, printed as `sha256:HEX FILE`.
    Digest {
        /// Print only the hex digest.
        #[arg(long)]
        compact: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub(crate) fn run(c: Command) -> anyhow::Result<()> {
    let (verb, files, compact): (&str, _, bool) = match &c {
        Command::Enable { files } => ("enable", files, false),
        Command::Measure { files, compact } => ("measure", files, *compact),
        Command::Digest { files, compact } => ("digest", files, *compact),
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut failed: Vec<(&Path, VerityError)> = Vec::new();
    for path in files {
        let r = match c {
            Command::Enable { .. } => enable_path(path).map(|_| None),
            Command::Measure { .. } => measure_path(path).map(Some),
            Command::Digest { .. } => digest_path(path).map(Some),
        };
        match r {
            Ok(None) => {}
            Ok(Some(d)) if compact => writeln!(out, "{}", to_hex(&d))?,
            Ok(Some(d)) => writeln!(out, "sha256:{} {}", to_hex(&d), path.display())?,
            Err(e) => failed.push((path, e)),
        }
    }
    out.flush()?;
    match failed.len() {
        0 => Ok(()),
        1 => {
            let (_, e) = failed.pop().expect("one element");
            Err(e).with_context(|| format!("verity {verb}"))
        }
        n => {
            for (_, e) in &failed {
                eprintln!("cfsmount: verity {verb}: {e}");
            }
            let names: Vec<String> = failed.iter().map(|(p, _)| p.display().to_string()).collect();
            anyhow::bail!("verity {verb}: {n} files failed: {}", names.join(", "))
        }
    }
}
