//! The drop-in personalities `mkcomposefs`, `composefs-info` and `composefs-dump`: the reference
//! tools' command lines, messages and exit codes on top of cfsmount's engines
//! (docs/dropin.md). Chosen by the name the binary is invoked under.

mod dump;
mod getopt;
mod info;
mod mkcomposefs;

use std::ffi::{OsStr, OsString};

/// Which reference tool the binary stands in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Personality {
    Mkcomposefs,
    Info,
    Dump,
}

impl Personality {
    /// The personality for an argv\[0\] (its file name), if any.
    pub(crate) fn from_argv0(argv0: &OsStr) -> Option<Personality> {
        match std::path::Path::new(argv0).file_name()?.to_str()? {
            "mkcomposefs" => Some(Personality::Mkcomposefs),
            "composefs-info" => Some(Personality::Info),
            "composefs-dump" => Some(Personality::Dump),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Personality::Mkcomposefs => "mkcomposefs",
            Personality::Info => "composefs-info",
            Personality::Dump => "composefs-dump",
        }
    }
}

/// How a personality fails; every failure exits 1, as in the reference tools.
#[derive(Debug)]
pub(crate) enum Fail {
    /// `NAME: message` (the reference's `err`/`errx`).
    Prefixed(String),
    /// The message alone (the reference's bare `fprintf(stderr, ...)`), no usage.
    Plain(String),
    /// An optional message line, then the usage text.
    Usage(Option<String>),
}

/// Run `personality` with the full argv; returns the exit code.
pub(crate) fn main(personality: Personality, argv: Vec<OsString>) -> i32 {
    // Invoked through a setuid or file-capability install, a personality is nothing more than the
    // reference tool run by the caller: every privilege goes before anything else happens.
    if let Err(e) = crate::privileged::drop::drop_for_good() {
        eprintln!("{}: {e:#}", personality.name());
        return 1;
    }
    let argv0 = argv.first().cloned().unwrap_or_else(|| personality.name().into());
    let args = argv.get(1..).unwrap_or_default();
    let r = match personality {
        Personality::Mkcomposefs => mkcomposefs::run(args),
        Personality::Info => info::run(&argv0, args),
        Personality::Dump => dump::run(args),
    };
    match r {
        Ok(()) => 0,
        Err(Fail::Prefixed(m)) => {
            eprintln!("{}: {m}", personality.name());
            1
        }
        Err(Fail::Plain(m)) => {
            eprintln!("{m}");
            1
        }
        Err(Fail::Usage(m)) => {
            if let Some(m) = m {
                eprintln!("{m}");
            }
            let text = match personality {
                Personality::Mkcomposefs => mkcomposefs::usage(&argv0),
                Personality::Info => info::usage(&argv0),
                Personality::Dump => dump::usage(&argv0),
            };
            eprint!("{text}");
            1
        }
    }
}

/// `POSIXLY_CORRECT` in the environment stops option parsing at the first operand (glibc).
fn posixly_correct() -> bool {
    std::env::var_os("POSIXLY_CORRECT").is_some()
}

/// The text of an OS string as the C tools print it (bytes; invalid UTF-8 shown lossily).
fn show(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

/// `strerror` text of an I/O error, without Rust's " (os error N)" suffix.
fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}
