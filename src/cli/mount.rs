//! `cfsmount mount` and `cfsmount umount`: clap arguments → a mount request for the engine.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::mount::access::{Access, Direct};
use crate::mount::{kernel, mount, unmount, Dest, IdmapSpec, MountError, MountOutcome, MountRequest, Settings};
use crate::mount::{SourceKind, Verity};
use crate::privileged::gate::Gate;
use crate::privileged::Mode;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The image (or, with --toc/--dump, the TOC/dumpfile to build one from). This is the lowest
    /// layer; each --layer goes on top of the previous one.
    pub(crate) source: PathBuf,
    /// Directory to mount on (omit with --fd-out).
    pub(crate) target: Option<PathBuf>,
    /// Object directories (content store), ':'-separated; repeatable.
    #[arg(long, required = true)]
    pub(crate) basedir: Vec<OsString>,
    /// Expected fs-verity digest of the image (hex); repeat once per image (SOURCE, then each
    /// --layer). Implies --verity, as the reference mount.composefs does.
    #[arg(long)]
    pub(crate) digest: Vec<String>,
    /// overlay verity=require: every object must carry the fs-verity digest the image names.
    #[arg(long, conflicts_with = "try_verity")]
    pub(crate) verity: bool,
    /// verity=require when the kernel offers it.
    #[arg(long)]
    pub(crate) try_verity: bool,
    /// Idmap the mount with this user namespace (e.g. /proc/PID/ns/user).
    #[arg(long, conflicts_with_all = ["uidmap", "gidmap"])]
    pub(crate) idmap: Option<PathBuf>,
    /// INSIDE:OUTSIDE:COUNT (repeatable): create a user namespace with this uid map for the idmap.
    #[arg(long, requires = "gidmap")]
    pub(crate) uidmap: Vec<String>,
    /// INSIDE:OUTSIDE:COUNT (repeatable): gid map of the created user namespace.
    #[arg(long, requires = "uidmap")]
    pub(crate) gidmap: Vec<String>,
    /// Writable upper layer (requires --workdir).
    #[arg(long, requires = "workdir")]
    pub(crate) upperdir: Option<PathBuf>,
    /// overlay work directory (requires --upperdir).
    #[arg(long, requires = "upperdir")]
    pub(crate) workdir: Option<PathBuf>,
    /// Mount read-only even with an upper layer.
    #[arg(long)]
    pub(crate) ro: bool,
    /// Instead of attaching at TARGET, send the detached mount fd (SCM_RIGHTS) over this unix
    /// socket: a socket path to connect to, or the number of an inherited connected socket fd.
    #[arg(long, conflicts_with = "target")]
    pub(crate) fd_out: Option<String>,
    /// Always use a loop device, even when the kernel can mount the image file directly.
    #[arg(long)]
    pub(crate) force_loop: bool,
    /// Another layer on top (repeatable, in stacking order, lowest first).
    #[arg(long)]
    pub(crate) layer: Vec<PathBuf>,
    /// SOURCE and the layers are zstd:chunked TOC JSON files, built on the fly (sandboxed).
    #[arg(long, conflicts_with_all = ["dump", "estargz"])]
    pub(crate) toc: bool,
    /// SOURCE and the layers are eStargz TOCs (stargz.index.json), built on the fly (sandboxed).
    #[arg(long, conflicts_with = "dump")]
    pub(crate) estargz: bool,
    /// SOURCE and the layers are composefs dumpfiles, built on the fly (sandboxed).
    #[arg(long)]
    pub(crate) dump: bool,
    /// Keep setuid/setgid bits effective (root only).
    #[arg(long)]
    pub(crate) allow_suid: bool,
    /// Allow device nodes (root only).
    #[arg(long)]
    pub(crate) allow_dev: bool,
    /// Mount noexec.
    #[arg(long)]
    pub(crate) noexec: bool,
    /// Print what was done.
    #[arg(long, short)]
    pub(crate) verbose: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct UmountArgs {
    /// Mount point of a cfsmount mount.
    pub(crate) target: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

pub(crate) fn parse_digests(v: &[String]) -> Result<Vec<[u8; 32]>, MountError> {
    v.iter().map(|d| crate::fsverity::parse_hex(d).map_err(|e| MountError::Usage(format!("digest: {e}")))).collect()
}

pub(crate) fn split_basedirs(v: &[OsString]) -> Result<Vec<PathBuf>, MountError> {
    let mut out = Vec::new();
    for b in v {
        for part in b.as_bytes().split(|c| *c == b':') {
            if part.is_empty() {
                return Err(MountError::Usage(format!("basedir {:?} has an empty component", b)));
            }
            out.push(PathBuf::from(std::ffi::OsStr::from_bytes(part)));
        }
    }
    Ok(out)
}

/// `--fd-out S`: a socket path, or the number of an inherited connected socket. The number must
/// be an open socket now, while the command line is read: later it could be one of this
/// process's own fds, if the caller left it closed (the setuid helper opens its state directory,
/// the caller's files and more before it hands the mount over).
pub(crate) fn parse_dest_fd_out(s: &str) -> Result<Dest, MountError> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i32 = s.parse().map_err(|_| MountError::Usage(format!("--fd-out {s}: bad fd number")))?;
        match crate::sys::mount::inherited_socket(n) {
            Ok(Some(fd)) => Ok(Dest::InheritedFd { n, fd }),
            Ok(None) => Err(MountError::Usage(format!("--fd-out {n}: not a socket"))),
            Err(rustix::io::Errno::BADF) => Err(MountError::Usage(format!("--fd-out {n}: not an open fd"))),
            Err(e) => Err(MountError::Usage(format!("--fd-out {n}: {e}"))),
        }
    } else {
        Ok(Dest::Socket(PathBuf::from(s)))
    }
}

/// The access policy and the settings the engine runs with in `mode`: chosen here, once.
pub(crate) fn engine_for(mode: &Mode) -> (Box<dyn Access>, Settings) {
    match mode {
        Mode::Plain => (Box::new(Direct::new()), Settings::from_env()),
        Mode::Helper(ctx) => {
            let settings = Settings::fixed();
            (Box::new(Gate::new((**ctx).clone()).with_verdicts(&settings.state_dir)), settings)
        }
    }
}

/// `-v`: how each layer and the overlay were mounted.
pub(crate) fn print_outcome(o: &MountOutcome) {
    for l in &o.layers {
        let how = match &l.loop_device {
            Some((dev, direct_io, retries)) => format!(
                "on {}{}{}",
                dev.display(),
                if *direct_io { " (direct I/O)" } else { "" },
                if *retries > 0 { format!(" after {retries} EBUSY retries") } else { String::new() }
            ),
            None => "file-backed".to_string(),
        };
        super::say(format_args!("cfsmount: {}: EROFS {how} (mount id {})", l.label.display(), l.erofs_mount_id));
    }
    super::say(format_args!(
        "cfsmount: overlay mount id {} ({}{})",
        o.record.mount_id,
        if o.legacy_overlay { "legacy lowerdir string" } else { "lowerdir+/datadir+" },
        if o.verity { ", verity=require" } else { "" }
    ));
}

/// `--idmap FILE` or `--uidmap`/`--gidmap` maps → the engine's idmap (also `cfsmount oci mount`).
pub(crate) fn idmap_spec(
    idmap: Option<&PathBuf>,
    uidmap: &[String],
    gidmap: &[String],
) -> anyhow::Result<Option<IdmapSpec>> {
    Ok(if let Some(p) = idmap {
        Some(IdmapSpec::Path(p.clone()))
    } else if !uidmap.is_empty() {
        Some(IdmapSpec::Maps {
            uid: uidmap.iter().map(|s| s.parse()).collect::<Result<_, _>>()?,
            gid: gidmap.iter().map(|s| s.parse()).collect::<Result<_, _>>()?,
        })
    } else {
        None
    })
}

/// `TARGET` or `--fd-out SOCKET` (exactly one) → where the mount goes (also `cfsmount oci mount`).
pub(crate) fn dest(target: Option<&PathBuf>, fd_out: Option<&str>) -> anyhow::Result<Dest> {
    Ok(match (target, fd_out) {
        (Some(t), None) => Dest::Target(t.clone()),
        (None, Some(s)) => parse_dest_fd_out(s)?,
        _ => bail!("give either TARGET or --fd-out SOCKET"),
    })
}

fn request(a: &Args) -> anyhow::Result<MountRequest> {
    let mut sources = vec![a.source.clone()];
    sources.extend(a.layer.iter().cloned());
    let digests = parse_digests(&a.digest)?;
    let verity = if a.verity || !digests.is_empty() {
        Verity::Require
    } else if a.try_verity {
        Verity::Try
    } else {
        Verity::Off
    };
    let idmap = idmap_spec(a.idmap.as_ref(), &a.uidmap, &a.gidmap)?;
    let dest = dest(a.target.as_ref(), a.fd_out.as_deref())?;
    let kind = match (a.toc, a.estargz, a.dump) {
        (true, _, _) => SourceKind::Toc,
        (_, true, _) => SourceKind::Estargz,
        (_, _, true) => SourceKind::Dump,
        _ => SourceKind::Image,
    };
    Ok(MountRequest {
        sources,
        kind,
        digests,
        basedirs: split_basedirs(&a.basedir)?,
        verity,
        idmap,
        upper: a.upperdir.clone().zip(a.workdir.clone()),
        readonly: a.ro,
        force_loop: a.force_loop,
        allow_suid: a.allow_suid,
        allow_dev: a.allow_dev,
        noexec: a.noexec,
        dest,
    })
}

/// `cfsmount mount`.
pub(crate) fn run(a: Args, mode: &Mode) -> anyhow::Result<()> {
    let req = request(&a)?;
    let (access, settings) = engine_for(mode);
    match mount(&req, access.as_ref(), &kernel::Real, &settings) {
        Ok(o) => {
            if a.verbose {
                print_outcome(&o);
            }
            Ok(())
        }
        // Errors about the source already start with its path: say it once.
        Err(e) if e.source_path() == Some(a.source.as_path()) => Err(anyhow::Error::new(e).context("mount")),
        Err(e) => Err(anyhow::Error::new(e).context(format!("mounting {}", a.source.display()))),
    }
}

/// `cfsmount umount`.
pub(crate) fn umount(a: UmountArgs, mode: &Mode) -> anyhow::Result<()> {
    let (access, settings) = engine_for(mode);
    unmount(&a.target, access.as_ref(), &kernel::Real, &settings)
        .with_context(|| format!("unmounting {}", a.target.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// `--fd-out N` names a socket open when the command line is read, or is refused then (a
    /// number left closed could later be one of the helper's own fds).
    #[test]
    fn fd_out_numbers_must_be_open_sockets() {
        let (a, _b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let n = a.as_raw_fd();
        // The socket is kept as a duplicate taken now (the same socket: same inode).
        match parse_dest_fd_out(&n.to_string()) {
            Ok(Dest::InheritedFd { n: m, fd }) => {
                assert_eq!(m, n);
                assert_ne!(fd.as_raw_fd(), n);
                assert_eq!(rustix::fs::fstat(&fd).unwrap().st_ino, rustix::fs::fstat(&a).unwrap().st_ino);
            }
            other => panic!("{other:?}"),
        }
        let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let e = parse_dest_fd_out(&r.as_raw_fd().to_string()).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        // A number no fd has (beyond any fd table here: EBADF).
        let e = parse_dest_fd_out("999999").unwrap_err().to_string();
        assert!(e.contains("--fd-out 999999: not an open fd"), "{e}");
        assert!(matches!(parse_dest_fd_out("/run/user/1000/s"), Ok(Dest::Socket(_))));
    }
}
