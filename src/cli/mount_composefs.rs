//! `mount.composefs`: util-linux's helper argv and the `-o` option grammar.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::Context;
use rustix::fs::{Mode, OFlags};

use super::mount::split_basedirs;
use crate::mount::overlay::Verity;
use crate::mount::{mount, Dest, IdmapSpec, MountError, MountRequest, SourceKind};

// ---------------------------------------------------------------------------------------------
// mount.composefs
// ---------------------------------------------------------------------------------------------

/// Splits a `-o` string at unescaped commas; `\` escapes the next character in values (as the
/// reference mount.composefs does). Returns (key, value) pairs.
pub fn parse_options(s: &str) -> Result<Vec<(String, Option<String>)>, MountError> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        // one option: up to an unescaped ','
        let start = i;
        let mut eq = None;
        while i < b.len() && b[i] != b',' {
            if b[i] == b'=' && eq.is_none() {
                eq = Some(i);
            } else if b[i] == b'\\' && i + 1 < b.len() {
                i += 1;
            }
            i += 1;
        }
        let opt = &s[start..i];
        let (key, val) = match eq {
            Some(e) => (&s[start..e], Some(unescape(&s[e + 1..i]))),
            None => (opt, None),
        };
        if key.is_empty() {
            return Err(MountError::Usage(format!("empty option in {s:?}")));
        }
        out.push((key.to_string(), val));
        if i >= b.len() {
            break;
        }
        i += 1; // skip ','
        if i >= b.len() {
            return Err(MountError::Usage(format!("trailing comma in {s:?}")));
        }
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            if let Some(n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parsed `mount.composefs` command line.
#[derive(Debug, Default)]
pub struct HelperArgs {
    pub source: Option<PathBuf>,
    pub target: Option<PathBuf>,
    pub options: Vec<String>,
    pub fake: bool,
    pub sloppy: bool,
    pub verbose: bool,
    pub namespace: Option<String>,
}

/// util-linux calls helpers as `mount.TYPE SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`; options
/// may also precede the operands (getopt order).
pub fn parse_helper_argv(argv: &[OsString]) -> Result<HelperArgs, MountError> {
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

/// Turns `mount.composefs` arguments into a request.
pub fn helper_request(h: &HelperArgs) -> Result<MountRequest, MountError> {
    let (mut basedir, mut digest, mut idmap, mut upper, mut work) = (None, None, None, None, None);
    let (mut verity, mut tryverity, mut ro, mut suid, mut dev, mut noexec) = (false, false, false, false, false, false);
    let need =
        |k: &str, v: Option<String>| v.ok_or_else(|| MountError::Usage(format!("No value specified for {k} option")));
    for o in &h.options {
        for (k, v) in parse_options(o)? {
            match k.as_str() {
                "basedir" => basedir = Some(need(&k, v)?),
                "digest" => digest = Some(need(&k, v)?),
                "idmap" => idmap = Some(need(&k, v)?),
                "upperdir" => upper = Some(need(&k, v)?),
                "workdir" => work = Some(need(&k, v)?),
                "verity" | "tryverity" | "ro" | "rw" | "nosuid" | "nodev" | "suid" | "dev" | "noexec" | "exec"
                    if v.is_some() =>
                {
                    return Err(MountError::Usage(format!("option {k} takes no value")));
                }
                "verity" => verity = true,
                "tryverity" => tryverity = true,
                "ro" => ro = true,
                "rw" => ro = false,
                "nosuid" => suid = false,
                "nodev" => dev = false,
                "suid" => suid = true,
                "dev" => dev = true,
                "noexec" => noexec = true,
                "exec" => noexec = false,
                _ if h.sloppy => eprintln!("mount.composefs: ignoring unsupported option {k}"),
                _ => return Err(MountError::Usage(format!("Unsupported option {k}"))),
            }
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
    Ok(MountRequest {
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
        verbose: h.verbose,
    })
}

/// `mount.composefs SOURCE TARGET [-o OPTIONS]`, as util-linux calls helpers.
pub fn helper_main(argv: &[OsString]) -> anyhow::Result<()> {
    let h = parse_helper_argv(argv)?;
    // Privileged helper: option strings are vetted whole (suid/dev/unknown/escapes/length), and
    // no other mount namespace may be entered on behalf of an unprivileged caller.
    for o in &h.options {
        crate::privileged::check_option_string(o)?;
    }
    if crate::privileged::privileged() && h.namespace.is_some() {
        return Err(MountError::Refused("-N is not available to unprivileged callers".into()).into());
    }
    let req = helper_request(&h)?;
    if let Some(ns) = &h.namespace {
        enter_mount_ns(ns)?;
    }
    if h.fake {
        return Ok(());
    }
    let src = h.source.clone().unwrap_or_default();
    mount(req).with_context(|| format!("Failed to mount composefs {}", src.display()))?;
    Ok(())
}

/// `-N NS`: a PID or a path of a mount namespace to mount in.
fn enter_mount_ns(ns: &str) -> Result<(), MountError> {
    let path = if !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()) {
        format!("/proc/{ns}/ns/mnt")
    } else {
        ns.to_string()
    };
    let fd = rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| MountError::Usage(format!("-N {ns}: {e}")))?;
    rustix::thread::move_into_link_name_space(fd.as_fd(), Some(rustix::thread::LinkNameSpaceType::Mount))
        .map_err(|e| MountError::Usage(format!("-N {ns}: setns: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::IdMap;
    use std::path::Path;

    #[test]
    fn options_like_the_reference() {
        let o = parse_options("basedir=/a\\,b:/c,digest=ab,verity,ro").unwrap();
        assert_eq!(o[0], ("basedir".to_string(), Some("/a,b:/c".to_string())));
        assert_eq!(o[1], ("digest".to_string(), Some("ab".to_string())));
        assert_eq!(o[2], ("verity".to_string(), None));
        assert_eq!(o[3], ("ro".to_string(), None));
        assert!(parse_options("ro,").is_err());
        assert!(parse_options(",ro").is_err());
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
        let mk = |o: &str| HelperArgs {
            source: Some("i".into()),
            target: Some("t".into()),
            options: vec![o.into()],
            ..Default::default()
        };
        assert!(helper_request(&mk("basedir=/a,bogus")).is_err());
        assert!(helper_request(&mk("ro")).is_err()); // no basedir
        assert!(helper_request(&mk("basedir=/a,upperdir=/u")).is_err());
        assert!(helper_request(&mk("basedir=/a::/b")).is_err());
        let r = helper_request(&mk("basedir=/a:/b\\,c,tryverity,ro")).unwrap();
        assert_eq!(r.basedirs, vec![PathBuf::from("/a"), PathBuf::from("/b,c")]);
        assert_eq!(r.verity, Verity::Try);
        assert!(r.readonly);
    }

    #[test]
    fn idmap_specs() {
        assert_eq!("0:100000:65536".parse::<IdMap>().unwrap(), IdMap { inside: 0, outside: 100000, count: 65536 });
        for bad in ["0:1", "a:1:1", "0:0:0", "4294967295:0:2", "-1:0:1", "0:1:1:1", "+1:0:1"] {
            assert!(bad.parse::<IdMap>().is_err(), "{bad}");
        }
    }
}
