//! `mount.composefs`: util-linux's helper argv (`mount -t composefs` calls it) and THE `-o`
//! option grammar: [`parse_options`] yields typed options, the access policy checks that very
//! list, and the request is built from it.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::Context;

use super::mount::{engine_for, print_outcome, split_basedirs};
use crate::mount::{kernel, mount, Dest, IdmapSpec, MountError, MountOption, MountRequest, SourceKind, Verity};
use crate::privileged::Mode;

/// Splits a `-o` string into options at unescaped commas, and each option into key and value at
/// its first unescaped `=`; `\` escapes the next character (as in the reference
/// mount.composefs), in keys and values alike. Empty options, a trailing comma and a dangling
/// backslash are errors.
pub(crate) fn parse_options(s: &str) -> Result<Vec<MountOption>, MountError> {
    let usage = |m: String| MountError::Usage(m);
    let mut out = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    // (key, value) with the escapes resolved; `in_value` once the first unescaped '=' was seen.
    let (mut key, mut value, mut in_value) = (String::new(), None::<String>, false);
    let mut chars = s.chars();
    loop {
        let c = chars.next();
        match c {
            Some('\\') => {
                let n = chars.next().ok_or_else(|| usage(format!("dangling backslash at the end of {s:?}")))?;
                if in_value {
                    value.get_or_insert_with(String::new).push(n)
                } else {
                    key.push(n)
                }
            }
            Some('=') if !in_value => {
                in_value = true;
                value = Some(String::new());
            }
            Some(',') | None => {
                if key.is_empty() {
                    return Err(usage(if c.is_none() && !out.is_empty() {
                        format!("trailing comma in {s:?}")
                    } else {
                        format!("empty option in {s:?}")
                    }));
                }
                out.push(typed(std::mem::take(&mut key), value.take())?);
                in_value = false;
                if c.is_none() {
                    return Ok(out);
                }
            }
            Some(ch) => {
                if in_value {
                    value.get_or_insert_with(String::new).push(ch)
                } else {
                    key.push(ch)
                }
            }
        }
    }
}

/// One option by name: the known ones with their value rules, anything else `Unknown`.
fn typed(key: String, value: Option<String>) -> Result<MountOption, MountError> {
    let need = |v: Option<String>| v.ok_or_else(|| MountError::Usage(format!("No value specified for {key} option")));
    let flag = |o: MountOption| match &value {
        Some(_) => Err(MountError::Usage(format!("option {key} takes no value"))),
        None => Ok(o),
    };
    match key.as_str() {
        "basedir" => Ok(MountOption::Basedir(need(value)?)),
        "digest" => Ok(MountOption::Digest(need(value)?)),
        "idmap" => Ok(MountOption::Idmap(need(value)?)),
        "upperdir" => Ok(MountOption::Upperdir(need(value)?)),
        "workdir" => Ok(MountOption::Workdir(need(value)?)),
        "verity" => flag(MountOption::Verity),
        "tryverity" => flag(MountOption::TryVerity),
        "ro" => flag(MountOption::Ro),
        "rw" => flag(MountOption::Rw),
        "nosuid" => flag(MountOption::Nosuid),
        "nodev" => flag(MountOption::Nodev),
        "noexec" => flag(MountOption::Noexec),
        "suid" => flag(MountOption::Suid),
        "dev" => flag(MountOption::Dev),
        "exec" => flag(MountOption::Exec),
        _ => Ok(MountOption::Unknown { key, value }),
    }
}

/// Parsed `mount.composefs` command line.
#[derive(Debug, Default)]
pub(crate) struct HelperArgs {
    pub(crate) source: Option<PathBuf>,
    pub(crate) target: Option<PathBuf>,
    pub(crate) options: Vec<String>,
    pub(crate) fake: bool,
    pub(crate) sloppy: bool,
    pub(crate) verbose: bool,
    pub(crate) namespace: Option<String>,
}

/// util-linux calls helpers as `mount.TYPE SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`; options
/// may also precede the operands (getopt order).
pub(crate) fn parse_helper_argv(argv: &[OsString]) -> Result<HelperArgs, MountError> {
    let mut h = HelperArgs::default();
    let mut pos: Vec<PathBuf> = Vec::new();
    let mut i = 0;
    let mut only_pos = false;
    let need = |i: usize, flag: &str| -> Result<String, MountError> {
        argv.get(i)
            .and_then(|v| v.to_str())
            .map(|s| s.to_string())
            .ok_or_else(|| MountError::Usage(format!("option {flag} needs a (UTF-8) argument")))
    };
    while i < argv.len() {
        let a = &argv[i];
        let ab = a.as_bytes();
        if only_pos || ab.len() < 2 || ab[0] != b'-' {
            pos.push(PathBuf::from(a));
            i += 1;
            continue;
        }
        if ab == b"--" {
            only_pos = true;
            i += 1;
            continue;
        }
        // a cluster of short options, possibly ending in one that takes an argument
        let mut j = 1;
        while j < ab.len() {
            match ab[j] {
                b's' => h.sloppy = true,
                b'f' => h.fake = true,
                b'n' => {}
                b'v' => h.verbose = true,
                b'h' => return Err(MountError::Usage(helper_usage())),
                c @ (b'o' | b't' | b'N') => {
                    let val = if j + 1 < ab.len() {
                        String::from_utf8(ab[j + 1..].to_vec())
                            .map_err(|_| MountError::Usage("option value is not UTF-8".into()))?
                    } else {
                        i += 1;
                        need(i, &format!("-{}", c as char))?
                    };
                    match c {
                        b'o' => h.options.push(val),
                        b't' => {
                            if val != "composefs" {
                                return Err(MountError::Usage(format!("unsupported filesystem type {val:?}")));
                            }
                        }
                        _ => h.namespace = Some(val),
                    }
                    j = ab.len();
                    continue;
                }
                c => return Err(MountError::Usage(format!("unknown flag -{}\n{}", c as char, helper_usage()))),
            }
            j += 1;
        }
        i += 1;
    }
    if pos.len() != 2 {
        return Err(MountError::Usage(format!(
            "expected IMAGE and MOUNTPOINT, got {} operands\n{}",
            pos.len(),
            helper_usage()
        )));
    }
    h.target = pos.pop();
    h.source = pos.pop();
    Ok(h)
}

fn helper_usage() -> String {
    "usage: mount.composefs IMAGE MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTIONS]\n\
     options: basedir=PATH[:PATH...], digest=HEX, verity, tryverity, idmap=PATH, ro, rw, upperdir=PATH, workdir=PATH"
        .to_string()
}

/// Turns `mount.composefs` arguments and their parsed options into a request; also returns the
/// unknown options `-s` (sloppy) told it to ignore.
pub(crate) fn helper_request(
    h: &HelperArgs,
    options: &[MountOption],
) -> Result<(MountRequest, Vec<String>), MountError> {
    let (mut basedir, mut digest, mut idmap, mut upper, mut work) = (None, None, None, None, None);
    let (mut verity, mut tryverity, mut ro, mut suid, mut dev, mut noexec) = (false, false, false, false, false, false);
    let mut ignored = Vec::new();
    for o in options {
        match o {
            MountOption::Basedir(v) => basedir = Some(v.clone()),
            MountOption::Digest(v) => digest = Some(v.clone()),
            MountOption::Idmap(v) => idmap = Some(v.clone()),
            MountOption::Upperdir(v) => upper = Some(v.clone()),
            MountOption::Workdir(v) => work = Some(v.clone()),
            MountOption::Verity => verity = true,
            MountOption::TryVerity => tryverity = true,
            MountOption::Ro => ro = true,
            MountOption::Rw => ro = false,
            MountOption::Nosuid => suid = false,
            MountOption::Nodev => dev = false,
            MountOption::Suid => suid = true,
            MountOption::Dev => dev = true,
            MountOption::Noexec => noexec = true,
            MountOption::Exec => noexec = false,
            MountOption::Unknown { key, .. } if h.sloppy => ignored.push(key.clone()),
            MountOption::Unknown { key, .. } => return Err(MountError::Usage(format!("Unsupported option {key}"))),
        }
    }
    let basedir = basedir.ok_or_else(|| MountError::Usage("No object dirs specified (basedir=)".into()))?;
    if upper.is_some() != work.is_some() {
        return Err(MountError::Usage("Both workdir and upperdir must be specified if used".into()));
    }
    let digests = match &digest {
        Some(d) => vec![crate::fsverity::parse_hex(d).map_err(|e| MountError::Usage(format!("digest: {e}")))?],
        None => vec![],
    };
    let req = MountRequest {
        sources: vec![h.source.clone().unwrap_or_default()],
        kind: SourceKind::Image,
        basedirs: split_basedirs(&[OsString::from(basedir)])?,
        verity: if verity || !digests.is_empty() {
            Verity::Require
        } else if tryverity {
            Verity::Try
        } else {
            Verity::Off
        },
        digests,
        idmap: idmap.map(|p| IdmapSpec::Path(PathBuf::from(p))),
        upper: upper.map(PathBuf::from).zip(work.map(PathBuf::from)),
        readonly: ro,
        force_loop: false,
        allow_suid: suid,
        allow_dev: dev,
        noexec,
        dest: Dest::Target(h.target.clone().unwrap_or_default()),
    };
    Ok((req, ignored))
}

/// `mount.composefs SOURCE TARGET [-o OPTIONS]`, as util-linux calls helpers.
pub(crate) fn helper_main(argv: &[OsString], mode: &Mode) -> anyhow::Result<()> {
    let h = parse_helper_argv(argv)?;
    let (access, settings) = engine_for(mode);
    // The access policy sees each option string and the very options parsed from it.
    let mut options = Vec::new();
    for raw in &h.options {
        let parsed = parse_options(raw)?;
        access.check_options(raw, &parsed).map_err(MountError::from)?;
        options.extend(parsed);
    }
    if h.namespace.is_some() {
        access.check_namespace_switch().map_err(MountError::from)?;
    }
    let (req, ignored) = helper_request(&h, &options)?;
    for k in ignored {
        super::say(format_args!("mount.composefs: ignoring unsupported option {k}"));
    }
    if let Some(ns) = &h.namespace {
        crate::mount::handover::enter_mount_namespace(ns)?;
    }
    if h.fake {
        return Ok(());
    }
    let src = h.source.clone().unwrap_or_default();
    let o = mount(&req, access.as_ref(), &kernel::Real, &settings)
        .with_context(|| format!("Failed to mount composefs {}", src.display()))?;
    if h.verbose {
        print_outcome(&o);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn opts(s: &str) -> Vec<MountOption> {
        parse_options(s).unwrap()
    }

    #[test]
    fn options_like_the_reference() {
        use MountOption as O;
        assert_eq!(
            opts("basedir=/a\\,b:/c,digest=ab,verity,ro"),
            vec![O::Basedir("/a,b:/c".into()), O::Digest("ab".into()), O::Verity, O::Ro]
        );
        assert_eq!(opts("x=a=b"), vec![O::Unknown { key: "x".into(), value: Some("a=b".into()) }]);
        assert_eq!(opts("basedir=a\\=b"), vec![O::Basedir("a=b".into())]);
        assert_eq!(opts("-ro"), vec![O::Unknown { key: "-ro".into(), value: None }]);
        assert!(opts("").is_empty());
        for bad in ["ro,", ",ro", "ro,,rw", "basedir", "ro=1", "=x", "basedir=a\\"] {
            assert!(parse_options(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn helper_argv_orders() {
        let v = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        let h = parse_helper_argv(&v(&["img", "/mnt", "-n", "-o", "basedir=/x,ro", "-t", "composefs"])).unwrap();
        assert_eq!(h.source.as_deref(), Some(Path::new("img")));
        assert_eq!(h.target.as_deref(), Some(Path::new("/mnt")));
        assert_eq!(h.options, vec!["basedir=/x,ro".to_string()]);
        let h = parse_helper_argv(&v(&["-sv", "-obasedir=/x", "img", "/mnt"])).unwrap();
        assert!(h.sloppy && h.verbose);
        assert!(parse_helper_argv(&v(&["img"])).is_err());
        assert!(parse_helper_argv(&v(&["img", "/m", "-t", "ext4"])).is_err());
        assert!(parse_helper_argv(&v(&["img", "/m", "-q"])).is_err());
    }

    #[test]
    fn helper_options_rejected() {
        let h =
            |sloppy| HelperArgs { source: Some("i".into()), target: Some("t".into()), sloppy, ..Default::default() };
        let req = |o: &str| helper_request(&h(false), &opts(o));
        assert!(req("basedir=/a,bogus").is_err());
        assert!(req("ro").is_err()); // no basedir
        assert!(req("basedir=/a,upperdir=/u").is_err());
        assert!(req("basedir=/a::/b").is_err());
        let (r, ignored) = req("basedir=/a:/b\\,c,tryverity,ro").unwrap();
        assert_eq!(r.basedirs, vec![PathBuf::from("/a"), PathBuf::from("/b,c")]);
        assert_eq!(r.verity, Verity::Try);
        assert!(r.readonly && ignored.is_empty());
        let (_, ignored) = helper_request(&h(true), &opts("basedir=/a,bogus")).unwrap();
        assert_eq!(ignored, vec!["bogus".to_string()], "-s ignores unknown options (unprivileged)");
    }

    #[test]
    fn the_gate_sees_the_options_the_request_is_built_from() {
        // A comma escaped into a value stays inside that value for both: the gate sees no
        // `upperdir` option, and neither does the request.
        let parsed = opts("basedir=/o\\,upperdir=/etc");
        assert_eq!(parsed, vec![MountOption::Basedir("/o,upperdir=/etc".into())]);
        let h = HelperArgs { source: Some("i".into()), target: Some("t".into()), ..Default::default() };
        let (r, _) = helper_request(&h, &parsed).unwrap();
        assert!(r.upper.is_none());
        assert_eq!(r.basedirs, vec![PathBuf::from("/o,upperdir=/etc")]);
    }
}
