//! `mkcomposefs [OPTIONS] SOURCE IMAGE` (docs/dropin.md, "mkcomposefs"): the reference's command
//! line on cfsmount's sandboxed image build.

use std::ffi::{OsStr, OsString};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use super::getopt::{self, GetoptError, Item, LongOpt};
use super::{posixly_correct, show, Fail};
use crate::build::{BuildOptions, BuildRequest, InputFormat, Output, Source};
use crate::erofs::writer::WriteOptions;
use crate::input::dir::{WalkOptions, XattrSelection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum O {
    SkipXattrs,
    UserXattrs,
    SkipDevices,
    UseEpoch,
    DigestStore,
    PrintDigest,
    PrintDigestOnly,
    FromFile,
    MaxVersion,
    MinVersion,
    Threads,
    Hardlinks,
}

const LONGS: &[LongOpt<O>] = &[
    LongOpt { name: "skip-xattrs", value: false, id: O::SkipXattrs },
    LongOpt { name: "user-xattrs", value: false, id: O::UserXattrs },
    LongOpt { name: "skip-devices", value: false, id: O::SkipDevices },
    LongOpt { name: "use-epoch", value: false, id: O::UseEpoch },
    LongOpt { name: "digest-store", value: true, id: O::DigestStore },
    LongOpt { name: "print-digest", value: false, id: O::PrintDigest },
    LongOpt { name: "print-digest-only", value: false, id: O::PrintDigestOnly },
    LongOpt { name: "from-file", value: false, id: O::FromFile },
    LongOpt { name: "max-version", value: true, id: O::MaxVersion },
    LongOpt { name: "min-version", value: true, id: O::MinVersion },
    LongOpt { name: "threads", value: true, id: O::Threads },
    // cfsmount's own: keep hard links of a directory source (as `cfsmount mkimage --from-dir`).
    LongOpt { name: "hardlinks", value: false, id: O::Hardlinks },
];

/// `-C` and `-R` are in the reference's option string without a meaning: they print the usage.
const SHORTS: &[char] = &['C', 'R'];

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(super) fn usage(argv0: &OsStr) -> String {
    let bin = std::path::Path::new(argv0).file_name().map_or_else(|| show(argv0), show);
    format!(
        "Usage: {bin} [OPTIONS] SOURCE IMAGE\n\
         Options:\n  \
         --digest-store=PATH   Store content files in this directory\n  \
         --use-epoch           Make all mtimes zero\n  \
         --skip-devices        Don't store device nodes\n  \
         --skip-xattrs         Don't store file xattrs\n  \
         --user-xattrs         Only store user.* xattrs\n  \
         --print-digest        Print the digest of the image\n  \
         --print-digest-only   Print the digest of the image, don't write image\n  \
         --from-file           The source is a dump file, not a directory\n  \
         --min-version=N       Use this minimal format version (default=0)\n  \
         --max-version=N       Use this maximum format version (default=1)\n  \
         --threads=N           Use this to override the default number of threads used to calculate digest and copy files (default={})\n  \
         --hardlinks           Keep hard links of a directory SOURCE (default: one inode per name, as the reference)\n",
        cpu_count()
    )
}

#[derive(Debug, Default)]
struct Settings {
    from_file: bool,
    print_digest: bool,
    print_digest_only: bool,
    digest_store: Option<PathBuf>,
    skip_xattrs: bool,
    user_xattrs: bool,
    walk: WalkOptions,
    hardlinks: bool,
    /// `None` when neither version option was given.
    versions: Option<(i64, i64)>,
}

fn parse(args: &[OsString]) -> Result<(Settings, Vec<OsString>), Fail> {
    let parsed = getopt::parse(args, LONGS, SHORTS, posixly_correct());
    let mut s = Settings::default();
    let invalid = |what: &str, v: &OsStr| Fail::Plain(format!("Invalid {what} {}", show(v)));
    for item in parsed.items {
        match item {
            Item::Opt(O::UseEpoch, _) => s.walk.use_epoch = true,
            Item::Opt(O::SkipXattrs, _) => s.skip_xattrs = true,
            Item::Opt(O::UserXattrs, _) => s.user_xattrs = true,
            Item::Opt(O::SkipDevices, _) => s.walk.skip_devices = true,
            Item::Opt(O::DigestStore, v) => s.digest_store = v.map(PathBuf::from),
            Item::Opt(O::PrintDigest, _) => s.print_digest = true,
            Item::Opt(O::PrintDigestOnly, _) => (s.print_digest, s.print_digest_only) = (true, true),
            Item::Opt(O::FromFile, _) => s.from_file = true,
            Item::Opt(O::Hardlinks, _) => s.hardlinks = true,
            Item::Opt(O::MinVersion, v) => {
                let v = v.unwrap_or_default();
                let n = getopt::strtol(&v).ok_or_else(|| invalid("min version", &v))?;
                s.versions = Some((n, s.versions.map_or(0, |p| p.1)));
            }
            Item::Opt(O::MaxVersion, v) => {
                let v = v.unwrap_or_default();
                let n = getopt::strtol(&v).ok_or_else(|| invalid("max version", &v))?;
                s.versions = Some((s.versions.map_or(0, |p| p.0), n));
            }
            Item::Opt(O::Threads, v) => {
                let v = v.unwrap_or_default();
                // The reference stores strtol's long in an int.
                let n = getopt::strtol(&v).ok_or_else(|| invalid("threads count", &v))? as i32;
                if n <= 0 {
                    return Err(Fail::Plain(format!("Invalid threads count {n}")));
                }
                s.walk.threads = Some(n as usize);
            }
            Item::Err(GetoptError::MissingValue(_)) => return Err(Fail::Plain("option needs a value".into())),
            Item::Short(_) | Item::Err(_) => return Err(Fail::Usage(None)),
        }
    }
    Ok((s, parsed.operands))
}

pub(super) fn run(args: &[OsString]) -> Result<(), Fail> {
    let (s, operands) = parse(args)?;
    let Some(src) = operands.first() else {
        return Err(Fail::Usage(Some("No source path specified".into())));
    };
    if src.is_empty() {
        return Err(Fail::Prefixed("Empty source path specified".into()));
    }
    if operands.len() > 2 {
        return Err(Fail::Usage(Some("Too many arguments".into())));
    }
    let image = match (operands.get(1), s.print_digest_only) {
        (None, false) => return Err(Fail::Usage(Some("No destination path specified".into()))),
        (Some(_), true) => {
            return Err(Fail::Usage(Some("Cannot specify destination path with --print-digest-only".into())))
        }
        (image, _) => image.cloned(),
    };
    // The reference hands (int) versions to a uint32 field and refuses anything above 1.
    let (min, max) = s.versions.unwrap_or((0, 1));
    let (min, max) = ((min as i32) as u32, (max as i32) as u32);
    if min > 1 || max > 1 {
        return Err(Fail::Prefixed("cannot write file: Invalid argument".into()));
    }
    let to_stdout = image.as_deref() == Some(OsStr::new("-"));
    if to_stdout && std::io::stdout().is_terminal() {
        return Err(Fail::Prefixed("stdout is a tty.  Refusing to use it".into()));
    }

    let mut req;
    let source = if s.from_file {
        // Directory-walk flags and the store do not apply to a dumpfile (as in the reference).
        req = BuildRequest::new(InputFormat::Dump);
        req.strict_dump = std::env::var_os("CFS_PARSE_STRICT").is_some();
        if src == "-" {
            Source::Stdin
        } else {
            Source::Path(PathBuf::from(src))
        }
    } else {
        if s.skip_xattrs && s.user_xattrs {
            return Err(Fail::Prefixed(format!("error accessing {}: Invalid argument", show(src))));
        }
        req = BuildRequest::new(InputFormat::Dir);
        req.walk = WalkOptions {
            break_hardlinks: !s.hardlinks,
            xattrs: if s.skip_xattrs {
                XattrSelection::None
            } else if s.user_xattrs {
                XattrSelection::User
            } else {
                XattrSelection::All
            },
            ..s.walk
        };
        req.digest_store = s.digest_store.clone();
        Source::Path(PathBuf::from(src))
    };
    req.write = WriteOptions { min_version: min, max_version: max.max(min) };
    let output = match &image {
        Some(p) if !to_stdout => Output::Reference(PathBuf::from(p)),
        _ => Output::Anonymous { dir: None },
    };
    let (_, file) = crate::build::build_image(&req, source, &output, &BuildOptions::default())
        .map_err(|e| Fail::Prefixed(format!("{e:#}")))?;
    let mut file = file.ok_or_else(|| Fail::Prefixed("the build returned no image".into()))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if to_stdout {
        std::io::copy(&mut file, &mut out)
            .and_then(|_| out.flush())
            .map_err(|e| Fail::Prefixed(format!("cannot write file: {}", super::strerror(&e))))?;
    }
    if s.print_digest {
        let d = crate::fsverity::digest_file(&file)
            .map_err(|e| Fail::Prefixed(format!("computing the image digest: {}", super::strerror(&e))))?;
        writeln!(out, "{}", crate::fsverity::to_hex(&d))
            .and_then(|()| out.flush())
            .map_err(|e| Fail::Prefixed(format!("close output file: {}", super::strerror(&e))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }
    fn err(v: &[&str]) -> String {
        match run(&args(v)) {
            Err(Fail::Prefixed(m)) => format!("P:{m}"),
            Err(Fail::Plain(m)) => format!("M:{m}"),
            Err(Fail::Usage(m)) => format!("U:{}", m.unwrap_or_default()),
            Ok(()) => "ok".into(),
        }
    }

    #[test]
    fn command_line_errors_in_the_reference_order() {
        assert_eq!(err(&[]), "U:No source path specified");
        assert_eq!(err(&["", "x"]), "P:Empty source path specified");
        assert_eq!(err(&["a", "b", "c"]), "U:Too many arguments");
        assert_eq!(err(&["a"]), "U:No destination path specified");
        assert_eq!(
            err(&["--print-digest-only", "a", "b"]),
            "U:Cannot specify destination path with --print-digest-only"
        );
        assert_eq!(err(&["--threads=0", "--bogus", "a", "b"]), "M:Invalid threads count 0");
        assert_eq!(err(&["--threads="]), "M:Invalid threads count ");
        assert_eq!(err(&["--threads=x"]), "M:Invalid threads count x");
        assert_eq!(err(&["--min-version=1x"]), "M:Invalid min version 1x");
        assert_eq!(err(&["--max-version="]), "M:Invalid max version ");
        assert_eq!(err(&["--bogus", "--threads=0"]), "U:");
        assert_eq!(err(&["-C", "a", "b"]), "U:");
        assert_eq!(err(&["--print", "a", "b"]), "U:");
        assert_eq!(err(&["--from-file=x", "a", "b"]), "U:");
        assert_eq!(err(&["a", "b", "--threads"]), "M:option needs a value");
        assert_eq!(err(&["--min-version=2", "a", "b"]), "P:cannot write file: Invalid argument");
        assert_eq!(err(&["--min-version=-1", "a", "b"]), "P:cannot write file: Invalid argument");
        assert_eq!(err(&["--skip-xattrs", "--user-xattrs", "src", "b"]), "P:error accessing src: Invalid argument");
    }

    #[test]
    fn versions_default_and_single_option() {
        let (s, _) = parse(&args(&["a", "b"])).unwrap();
        assert_eq!(s.versions, None);
        let (s, _) = parse(&args(&["--max-version=0", "a", "b"])).unwrap();
        assert_eq!(s.versions, Some((0, 0)));
        let (s, _) = parse(&args(&["--min-version", "1", "a", "b"])).unwrap();
        assert_eq!(s.versions, Some((1, 0)));
    }
}
