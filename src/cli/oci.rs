//! `cfsmount oci import|mount|ls|rm` and `cfsmount store gc`: argument handling and printing
//! over [`crate::oci`] and [`crate::store::repo`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::mount::{MountRequest, Verity};
use crate::oci::import::{import, Imported};
use crate::oci::layout::{Platform, Reference};
use crate::oci::reader::BlobReader;
use crate::oci::Sha256;
use crate::store::repo::{Lock, Repo};

#[derive(clap::Args, Debug, Clone)]
pub struct StoreArg {
    /// The store (default: /var/lib/cfsmount for root, else $XDG_DATA_HOME/cfsmount or
    /// ~/.local/share/cfsmount).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

impl StoreArg {
    pub(crate) fn open(&self, lock: Lock) -> anyhow::Result<Repo> {
        let root = match &self.store {
            Some(s) => s.clone(),
            None => Repo::default_root().map_err(anyhow::Error::msg)?,
        };
        let root = std::path::absolute(&root).with_context(|| format!("store {}", root.display()))?;
        Repo::open(&root, lock).with_context(|| format!("opening the store {}", root.display()))
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum OciCommand {
    /// Import an image from an OCI image layout (oci:DIR[:TAG]) into the store.
    Import(ImportArgs),
    /// Mount an image (imported first if needed) read-only at TARGET.
    Mount(MountArgs),
    /// List the images in the store.
    Ls(StoreArg),
    /// Remove images from the store (their layers and objects go at the next `store gc`).
    Rm(RmArgs),
}

#[derive(clap::Subcommand, Debug)]
pub enum StoreCommand {
    /// Remove the layers no image uses and the objects no layer uses.
    Gc(StoreArg),
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// oci:DIR[:TAG] (the tag may be left out when the layout holds one image).
    pub reference: String,
    /// OS/ARCH[/VARIANT] to pick from a multi-platform image (default: this machine's).
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// oci:DIR[:TAG], or an image already in the store (digest, unique digest prefix, or the
    /// source it was imported from). Through the setuid helper: of the caller's own store, names
    /// other than a full digest resolved (and imported) as the caller.
    pub reference: String,
    /// Directory to mount on (omit with --fd-out).
    #[arg(required_unless_present = "fd_out")]
    pub target: Option<PathBuf>,
    /// OS/ARCH[/VARIANT] to pick from a multi-platform image (default: this machine's).
    #[arg(long)]
    pub platform: Option<String>,
    /// Instead of attaching at TARGET, send the detached mount fd (SCM_RIGHTS) over this unix
    /// socket: a socket path to connect to, or the number of an inherited connected socket fd.
    #[arg(long, conflicts_with = "target")]
    pub fd_out: Option<String>,
    /// Idmap the mount with this user namespace (e.g. /proc/PID/ns/user).
    #[arg(long, conflicts_with_all = ["uidmap", "gidmap"])]
    pub idmap: Option<PathBuf>,
    /// INSIDE:OUTSIDE:COUNT (repeatable): create a user namespace with this uid map for the idmap.
    #[arg(long, requires = "gidmap")]
    pub uidmap: Vec<String>,
    /// INSIDE:OUTSIDE:COUNT (repeatable): gid map of the created user namespace.
    #[arg(long, requires = "uidmap")]
    pub gidmap: Vec<String>,
    /// Writable upper layer (requires --workdir; root only: the helper refuses writable overlays).
    #[arg(long, requires = "workdir")]
    pub upperdir: Option<PathBuf>,
    /// overlay work directory (requires --upperdir).
    #[arg(long, requires = "upperdir")]
    pub workdir: Option<PathBuf>,
    /// Keep setuid/setgid bits effective (root only).
    #[arg(long)]
    pub allow_suid: bool,
    /// Allow device nodes (root only).
    #[arg(long)]
    pub allow_dev: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// Images: digest, unique digest prefix (4+ hex digits), or the source they were imported from.
    #[arg(required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

fn platform(p: &Option<String>) -> anyhow::Result<Option<Platform>> {
    Ok(match p {
        Some(s) => Some(Platform::parse(s)?),
        None => None,
    })
}

fn do_import(repo: &Repo, reference: &str, p: &Option<String>) -> anyhow::Result<Imported> {
    let r = Reference::parse(reference)?;
    import(repo, &r, platform(p)?.as_ref(), &BlobReader).with_context(|| format!("importing {reference}"))
}

pub(crate) fn run_oci(c: OciCommand, mode: &crate::privileged::Mode) -> anyhow::Result<()> {
    match c {
        OciCommand::Import(a) => {
            let repo = a.store.open(Lock::Shared)?;
            let im = do_import(&repo, &a.reference, &a.platform)?;
            let state = if im.new {
                format!("imported, {} layers read", im.layers_read)
            } else {
                "already in the store".into()
            };
            println!("{}\t{}\t{}\t{state}", im.manifest, im.info.fsverity, im.info.platform);
            Ok(())
        }
        OciCommand::Mount(a) => mount(a, mode),
        OciCommand::Ls(s) => {
            let repo = s.open(Lock::Shared)?;
            println!("IMAGE\tPLATFORM\tSIZE\tVERITY\tFS-VERITY DIGEST\tSOURCE");
            for (k, i) in repo.images()? {
                let v = if i.verity_enabled { "on" } else { "off" };
                println!("{}\t{}\t{}\t{v}\t{}\t{}", &k.hex()[..12], i.platform, i.image_size, i.fsverity, i.source);
            }
            Ok(())
        }
        OciCommand::Rm(a) => {
            let repo = a.store.open(Lock::Exclusive)?;
            let keys = a.names.iter().map(|n| find(&repo, n)).collect::<anyhow::Result<Vec<_>>>()?;
            for k in keys {
                refuse_if_mounted(&repo.image_path(&k), mode)?;
                repo.remove_image(&k).with_context(|| format!("removing {k}"))?;
                println!("removed {k}");
            }
            Ok(())
        }
    }
}

pub fn run_store(c: StoreCommand) -> anyhow::Result<()> {
    match c {
        StoreCommand::Gc(s) => {
            let repo = s.open(Lock::Exclusive)?;
            let r = repo.gc().context("store gc")?;
            println!(
                "removed {} layers and {} objects ({} bytes), {} staging directories of killed imports",
                r.layers, r.objects, r.bytes, r.staging
            );
            Ok(())
        }
    }
}

/// An image by name: `oci:DIR[:TAG]` is resolved in its layout (if the layout is still there)
/// to its manifest digest, else matched with the recorded source; anything else is a digest or
/// a unique digest prefix.
fn find(repo: &Repo, name: &str) -> anyhow::Result<Sha256> {
    if let Ok(r) = Reference::parse(name) {
        let layout = crate::oci::layout::Layout::open(&r.dir);
        if let Ok(img) = layout.and_then(|l| l.resolve(r.tag.as_deref(), None)) {
            if repo.has_image(&img.manifest_digest) {
                return Ok(img.manifest_digest);
            }
        }
        let dir = std::path::absolute(&r.dir).unwrap_or(r.dir.clone());
        let source = match &r.tag {
            Some(t) => format!("oci:{}:{t}", dir.display()),
            None => format!("oci:{}", dir.display()),
        };
        return Ok(repo.find_image(&source)?);
    }
    Ok(repo.find_image(name)?)
}

/// An image that a live mount uses cannot be removed (its objects would vanish under it).
fn refuse_if_mounted(image: &Path, mode: &crate::privileged::Mode) -> anyhow::Result<()> {
    let (_, settings) = super::mount::engine_for(mode);
    let records = match crate::mount::records::RecordStore::open(&settings.state_dir, false) {
        Ok(Some(store)) => store.list(),
        _ => Vec::new(),
    };
    if let Some(r) = records.iter().find(|r| r.sources.iter().any(|s| s == image)) {
        let at = r.target.as_ref().map_or("(detached)".to_string(), |t| t.display().to_string());
        bail!("{} is mounted at {at}: unmount it first", image.display());
    }
    Ok(())
}

fn mount(a: MountArgs, mode: &crate::privileged::Mode) -> anyhow::Result<()> {
    // Where the mount goes, first: an `--fd-out N` is checked to be an open socket before this
    // process opens anything of its own (`cli::mount::parse_dest_fd_out`).
    let dest = super::mount::dest(a.target.as_ref(), a.fd_out.as_deref())?;
    if let crate::privileged::Mode::Helper(ctx) = mode {
        return helper_mount(a, dest, ctx, mode);
    }
    // Shared for the whole mount: gc (exclusive) cannot remove objects in the meantime.
    let repo = a.store.open(Lock::Shared)?;
    let key: Sha256 = if a.reference.starts_with("oci:") {
        do_import(&repo, &a.reference, &a.platform)?.manifest
    } else {
        find(&repo, &a.reference)?
    };
    let info = repo.image_info(&key)?;
    let image = repo.image_path(&key);
    let mut digests = Vec::new();
    if info.verity_enabled {
        let d = Sha256::from_hex(&info.fsverity).context("image.json: fsverity is not 64 hex digits")?;
        digests.push(d.0);
    }
    let req = request(&a, dest, image, repo.objects_dir(), digests)?;
    let (access, settings) = super::mount::engine_for(mode);
    crate::mount::mount(&req, access.as_ref(), &crate::mount::kernel::Real, &settings)
        .with_context(|| format!("mounting {} ({key}) at {}", a.reference, shown_dest(&a)))?;
    Ok(())
}

/// `oci:`/`store` subcommands other than `oci mount` (also their help and usage errors): they
/// run as the caller, never with the helper's privileges (see `cli::main`).
pub(crate) fn runs_as_caller(argv: &[std::ffi::OsString]) -> bool {
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("store") => true,
        Some("oci") => argv.get(2).is_none_or(|a| a != "mount"),
        _ => false,
    }
}

/// `oci mount` through the setuid helper: the caller's own store only, the image named by its
/// digest (resolving names needs the store's records, which are the caller's to write); the
/// store is opened and checked as the caller (`privileged::oci`), then the request goes through
/// the gate like any `cfsmount mount`.
fn helper_mount(
    a: MountArgs,
    dest: crate::mount::Dest,
    ctx: &crate::privileged::init::HelperContext,
    mode: &crate::privileged::Mode,
) -> anyhow::Result<()> {
    let store = match &a.store.store {
        Some(s) => std::path::absolute(s).with_context(|| format!("store {}", s.display()))?,
        None => crate::privileged::oci::default_store(&ctx.caller)?,
    };
    let digest = match helper_digest(&a.reference) {
        Some(d) => d,
        None => crate::privileged::oci::resolve_as_caller(&ctx.caller, &a.reference, || {
            resolve_or_import(&store, &a.reference, &a.platform).map_err(|e| format!("{e:#}"))
        })?,
    };
    let img = crate::privileged::oci::open_store_image(&ctx.caller, &store, &digest)
        .with_context(|| format!("oci mount {digest}"))?;
    let req = request(&a, dest, img.image.clone(), img.objects.clone(), img.digest.into_iter().collect())?;
    let (access, settings) = super::mount::engine_for(mode);
    crate::mount::mount(&req, access.as_ref(), &crate::mount::kernel::Real, &settings)
        .with_context(|| format!("mounting {digest} of {} at {}", store.display(), shown_dest(&a)))?;
    drop(img);
    Ok(())
}

/// `sha256:HEX` or the bare 64 hex digits: a digest the helper checks against the store itself.
fn helper_digest(reference: &str) -> Option<Sha256> {
    if reference.starts_with("sha256:") {
        Sha256::parse(reference).ok()
    } else {
        Sha256::from_hex(reference)
    }
}

/// Any other name, in the child that is the caller (`privileged::oci::resolve_as_caller`):
/// `oci:DIR[:TAG]` is imported if needed, anything else looked up in the store's records.
fn resolve_or_import(store: &Path, reference: &str, p: &Option<String>) -> anyhow::Result<Sha256> {
    let repo = StoreArg { store: Some(store.to_path_buf()) }.open(Lock::Shared)?;
    if reference.starts_with("oci:") {
        Ok(do_import(&repo, reference, p)?.manifest)
    } else {
        find(&repo, reference)
    }
}

fn shown_dest(a: &MountArgs) -> String {
    match (&a.target, &a.fd_out) {
        (Some(t), _) => t.display().to_string(),
        (None, Some(s)) => format!("--fd-out {s}"),
        (None, None) => "?".into(),
    }
}

/// The engine request for image `image` over `objects` to `dest`, with the flags of `a`.
fn request(
    a: &MountArgs,
    dest: crate::mount::Dest,
    image: PathBuf,
    objects: PathBuf,
    digests: Vec<[u8; 32]>,
) -> anyhow::Result<MountRequest> {
    let idmap = super::mount::idmap_spec(a.idmap.as_ref(), &a.uidmap, &a.gidmap)?;
    Ok(MountRequest {
        sources: vec![image],
        kind: crate::mount::SourceKind::Image,
        verity: if digests.is_empty() { Verity::Off } else { Verity::Require },
        digests,
        basedirs: vec![objects],
        idmap,
        upper: a.upperdir.clone().zip(a.workdir.clone()),
        readonly: a.upperdir.is_none(),
        force_loop: false,
        allow_suid: a.allow_suid,
        allow_dev: a.allow_dev,
        noexec: false,
        dest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_oci_mount_keeps_the_helper() {
        let argv = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        for as_caller in [
            &["cfsmount", "oci", "import", "oci:x"][..],
            &["cfsmount", "oci"],
            &["cfsmount", "store", "gc"],
            &["cfsmount", "oci", "--help"],
        ] {
            assert!(runs_as_caller(&argv(as_caller)), "{as_caller:?}");
        }
        for helper in [&["cfsmount", "oci", "mount", "x", "y"][..], &["cfsmount", "mount", "a"], &["cfsmount"]] {
            assert!(!runs_as_caller(&argv(helper)), "{helper:?}");
        }
    }

    #[test]
    fn helper_digests_are_full_lower_case_sha256() {
        let hex = "ab".repeat(32);
        assert_eq!(helper_digest(&hex).map(|d| d.hex()), Some(hex.clone()));
        assert_eq!(helper_digest(&format!("sha256:{hex}")).map(|d| d.hex()), Some(hex.clone()));
        for not in [&hex[..12], "sha256:ABC", &hex.to_uppercase(), "oci:/x:v1", "sha512:00", ""] {
            assert!(helper_digest(not).is_none(), "{not}");
        }
    }
}
