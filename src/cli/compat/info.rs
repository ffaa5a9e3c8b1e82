//! `composefs-info [--basedir=DIR] [--filter=NAME]... ls|objects|missing-objects|dump|measure-file
//! ARGS...` (docs/dropin.md, "composefs-info"). Images are parsed in the sandbox
//! ([`crate::compat::info_image`]); only files named on the command line are opened here.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::getopt::{self, GetoptError, Item, LongOpt};
use super::{posixly_correct, show, strerror, Fail};
use crate::compat::{info_image, missing_objects, no_basedir, open_basedir, InfoCommand, InfoOutput};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum O {
    Basedir,
    Filter,
}

const LONGS: &[LongOpt<O>] =
    &[LongOpt { name: "basedir", value: true, id: O::Basedir }, LongOpt { name: "filter", value: true, id: O::Filter }];

pub(super) fn usage(argv0: &OsStr) -> String {
    format!("usage: {} [--basedir=path] [ls|objects|dump|missing-objects|measure-file] IMAGES...\n", show(argv0))
}

/// getopt's own message for an option error (the reference lets getopt print it).
fn getopt_message(argv0: &OsStr, e: &GetoptError) -> String {
    let a = show(argv0);
    match e {
        GetoptError::Unrecognized(n) => format!("{a}: unrecognized option '--{n}'"),
        GetoptError::Ambiguous(n) => format!("{a}: option '--{n}' is ambiguous"),
        GetoptError::MissingValue(n) => format!("{a}: option '--{n}' requires an argument"),
        GetoptError::UnexpectedValue(n) => format!("{a}: option '--{n}' doesn't allow an argument"),
        GetoptError::InvalidShort(c) => format!("{a}: invalid option -- '{c}'"),
    }
}

fn open(path: &OsStr) -> Result<File, Fail> {
    File::open(path).map_err(|e| Fail::Prefixed(format!("Failed to open '{}': {}", show(path), strerror(&e))))
}

pub(super) fn run(argv0: &OsStr, args: &[OsString]) -> Result<(), Fail> {
    let parsed = getopt::parse(args, LONGS, &[], posixly_correct());
    let mut basedir: Option<OsString> = None;
    let mut filter: Vec<Vec<u8>> = Vec::new();
    for item in parsed.items {
        match item {
            Item::Opt(O::Basedir, v) => basedir = v,
            Item::Opt(O::Filter, v) => {
                let v = v.unwrap_or_default();
                if v.as_bytes().contains(&b'/') {
                    return Err(Fail::Prefixed(format!("Filter must be a single name: {}", show(&v))));
                }
                filter.push(v.as_bytes().to_vec());
            }
            Item::Err(e) => return Err(Fail::Usage(Some(getopt_message(argv0, &e)))),
            Item::Short(_) => return Err(Fail::Usage(None)),
        }
    }
    let Some((command, rest)) = parsed.operands.split_first() else {
        return Err(Fail::Usage(Some("No command specified".into())));
    };
    let cmd = match command.as_bytes() {
        b"ls" => InfoCommand::Ls,
        b"dump" => InfoCommand::Dump,
        b"objects" | b"missing-objects" => InfoCommand::Objects,
        b"measure-file" => return measure_files(rest),
        _ => return Err(Fail::Prefixed(format!("Unknown command '{}'\n", show(command)))),
    };
    let missing = command == "missing-objects";
    let basedir: Option<OwnedFd> = match &basedir {
        Some(b) => Some(
            open_basedir(b)
                .map_err(|e| Fail::Prefixed(format!("Can't open basedir `{}`\n: {}", show(b), strerror(&e))))?,
        ),
        None => None,
    };
    if rest.is_empty() {
        return Err(Fail::Usage(Some("No image path specified".into())));
    }
    let mut objects = BTreeSet::new();
    let stdout = std::io::stdout();
    for image in rest {
        let f = open(image)?;
        let out = info_image(f.into(), cmd, &filter)
            .map_err(|e| Fail::Prefixed(format!("Failed to load '{}': {e}", show(image))))?;
        match out {
            InfoOutput::Text(t) => {
                let mut o = stdout.lock();
                o.write_all(&t).and_then(|()| o.flush()).map_err(|e| Fail::Prefixed(strerror(&e)))?;
            }
            InfoOutput::Objects(set) => objects.extend(set),
        }
    }
    if cmd == InfoCommand::Objects {
        let list = if missing {
            let dir = basedir.or_else(no_basedir);
            missing_objects(dir.as_ref().map(|d| d.as_fd()), &objects)
        } else {
            objects.into_iter().collect()
        };
        let mut o = stdout.lock();
        for p in list {
            o.write_all(&p).and_then(|()| o.write_all(b"\n")).map_err(|e| Fail::Prefixed(strerror(&e)))?;
        }
        o.flush().map_err(|e| Fail::Prefixed(strerror(&e)))?;
    }
    Ok(())
}

/// `measure-file FILE...`: the fs-verity digest the kernel reports, or the one computed here
/// for a file without fs-verity.
fn measure_files(files: &[OsString]) -> Result<(), Fail> {
    if files.is_empty() {
        return Err(Fail::Usage(Some("No files specified".into())));
    }
    let stdout = std::io::stdout();
    for path in files {
        let f = open(path)?;
        let failed = |why: String| Fail::Plain(format!("failed to measure '{}': {why}", show(path)));
        let d = match crate::fsverity::measure(f.as_fd()) {
            Ok(d) => d,
            Err(e) if matches!(e.kind(), crate::fsverity::VerityError::NotEnabled) || e.is_unsupported() => {
                crate::fsverity::digest_file(&f).map_err(|e| failed(strerror(&e)))?
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        let mut o = stdout.lock();
        writeln!(o, "{}", crate::fsverity::to_hex(&d)).and_then(|()| o.flush()).map_err(|e| failed(strerror(&e)))?;
    }
    Ok(())
}
