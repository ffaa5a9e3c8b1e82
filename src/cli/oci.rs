//! `cfsmount oci import|mount|ls|rm` and `cfsmount store gc`: argument handling and printing
//! over [`crate::oci`] and [`crate::store::repo`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

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
    fn open(&self, lock: Lock) -> anyhow::Result<Repo> {
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
    /// source it was imported from).
    pub reference: String,
    /// Directory to mount on.
    pub target: PathBuf,
    /// OS/ARCH[/VARIANT] to pick from a multi-platform image (default: this machine's).
    #[arg(long)]
    pub platform: Option<String>,
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
    let req = crate::mount::MountRequest {
        sources: vec![image.clone()],
        kind: crate::mount::SourceKind::Image,
        verity: if digests.is_empty() { crate::mount::Verity::Off } else { crate::mount::Verity::Require },
        digests,
        basedirs: vec![repo.objects_dir()],
        idmap: None,
        upper: None,
        readonly: true,
        force_loop: false,
        allow_suid: a.allow_suid,
        allow_dev: a.allow_dev,
        noexec: false,
        dest: crate::mount::Dest::Target(a.target.clone()),
    };
    let (access, settings) = super::mount::engine_for(mode);
    crate::mount::mount(&req, access.as_ref(), &crate::mount::kernel::Real, &settings)
        .with_context(|| format!("mounting {} ({key}) at {}", a.reference, a.target.display()))?;
    Ok(())
}
