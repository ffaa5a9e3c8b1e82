//! `cfsmount als add|rm|ls|mount-all|umount-all`: the Additional Layer Store for podman
//! ([`crate::als`]); argument handling and printing only.

use std::path::PathBuf;

use anyhow::Context as _;

use super::oci::StoreArg;
use crate::als::ops;
use crate::als::root::Engine;
use crate::als::state::AlsState;
use crate::oci::layout::{Platform, Reference};
use crate::store::repo::Lock;

#[derive(clap::Subcommand, Debug)]
pub enum AlsCommand {
    /// Serve the layers of an image (oci:DIR[:TAG]) in an ALS root for the reference podman pulls.
    Add(AddArgs),
    /// Stop serving a reference (refused while a container uses one of its layers).
    Rm(RmArgs),
    /// List the references served, by ALS root, and whether each root is mounted.
    Ls(LsArgs),
    /// Mount every ALS root the store records (after a reboot).
    MountAll(StoreArg),
    /// Unmount every ALS root and view (the records stay; mount-all brings them back).
    UmountAll(UmountAllArgs),
    /// Give a user (rootless podman) a view of an ALS root: the same layers, idmapped onto the
    /// user's podman mapping (its uid as root, then its /etc/subuid range).
    View(ViewArgs),
    /// Remove a view.
    ViewRm(ViewRmArgs),
}

#[derive(clap::Args, Debug)]
pub struct ViewArgs {
    /// The ALS root whose references the view serves.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// The user (name or uid).
    #[arg(long)]
    pub user: String,
    /// Where to mount the view (default /run/cfsmount-als/USER; every ancestor must be a
    /// root-owned directory only root can write). The user's storage.conf names it.
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(clap::Args, Debug)]
pub struct ViewRmArgs {
    /// The view's directory.
    #[arg(long, value_name = "DIR")]
    pub target: PathBuf,
    /// Detach layers still in use lazily.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The ALS root: the directory storage.conf's additionallayerstores names (with `:ref`).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// The image reference podman pulls (e.g. registry.example/app:1.0; normalized as podman
    /// does: docker.io/library/..., :latest).
    #[arg(long = "ref", value_name = "REF")]
    pub reference: String,
    /// The image: oci:DIR[:TAG].
    pub source: String,
    /// OS/ARCH[/VARIANT] to pick from a multi-platform image (default: this machine's).
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    #[arg(long = "ref", value_name = "REF")]
    pub reference: String,
    /// Detach layers still in use lazily (running containers keep them; the store keeps their
    /// objects until the next `store gc`).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Only this ALS root.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(clap::Args, Debug)]
pub struct UmountAllArgs {
    /// Detach layers still in use lazily.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

pub(crate) fn run(c: AlsCommand, mode: &crate::privileged::Mode) -> anyhow::Result<()> {
    let (access, settings) = super::mount::engine_for(mode);
    let kernel = crate::mount::kernel::Real;
    let engine = |objects: PathBuf| Engine { access: access.as_ref(), kernel: &kernel, settings: &settings, objects };
    match c {
        AlsCommand::Add(a) => {
            let repo = a.store.open(Lock::Shared)?;
            let als = AlsState::open(&repo, true)?;
            let root = ops::canonical_root(&a.root, true)?;
            let source = Reference::parse(&a.source)?;
            let platform = a.platform.as_deref().map(Platform::parse).transpose()?;
            let eng = engine(repo.objects_dir());
            let r = ops::add(&repo, &als, &root, &a.reference, &source, platform.as_ref(), &eng)
                .with_context(|| format!("adding {} as {} to {}", a.source, a.reference, root.display()))?;
            println!("{}\t{}\t{}", r.reference, r.manifest, root.display());
            for (i, (blob, toc)) in r.layers.iter().enumerate() {
                match toc {
                    Some(t) => println!("layer {}\t{blob}\ttoc {t}", i + 1),
                    None => println!("layer {}\t{blob}", i + 1),
                }
            }
            println!("{} layers read, {} mounted, {} keys added", r.layers_read, r.sync.mounted, r.sync.keys_added);
            Ok(())
        }
        AlsCommand::Rm(a) => {
            let repo = a.store.open(Lock::Exclusive)?;
            let als = AlsState::open(&repo, true)?;
            let root = ops::canonical_root(&a.root, false)?;
            let eng = engine(repo.objects_dir());
            let r = ops::rm(&repo, &als, &root, &a.reference, &eng, a.force)
                .with_context(|| format!("removing {} from {}", a.reference, root.display()))?;
            println!(
                "{} layers unmounted, {} keys removed, {} layer records and {} images pruned",
                r.sync.unmounted, r.sync.keys_removed, r.pruned.0, r.pruned.1
            );
            if a.force {
                println!("--force: objects stay until `cfsmount store gc`");
            } else {
                let g = repo.gc().context("store gc")?;
                println!("store gc: removed {} layers and {} objects ({} bytes)", g.layers, g.objects, g.bytes);
            }
            Ok(())
        }
        AlsCommand::Ls(a) => {
            let repo = a.store.open(Lock::Shared)?;
            let als = AlsState::open(&repo, false)?;
            let only = a.root.as_deref().map(|r| ops::canonical_root(r, false)).transpose()?;
            println!("ROOT\tMOUNTED\tREFERENCE\tMANIFEST\tLAYERS\tTOC KEYS\tSOURCE");
            for r in als.refs()?.iter().filter(|r| only.as_ref().is_none_or(|o| *o == r.root)) {
                let mounted = crate::als::root::is_mounted(&r.root).unwrap_or(false);
                let tocs = r.layers.iter().filter(|l| l.toc.is_some()).count();
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{tocs}\t{}",
                    r.root.display(),
                    if mounted { "yes" } else { "no" },
                    r.reference,
                    r.manifest,
                    r.layers.len(),
                    r.source
                );
            }
            for v in als.views()?.iter().filter(|v| only.as_ref().is_none_or(|o| *o == v.root)) {
                let mounted = crate::als::root::is_mounted(&v.target).unwrap_or(false);
                println!(
                    "view {}\t{}\tuser {} ({})\tof {}",
                    v.target.display(),
                    if mounted { "yes" } else { "no" },
                    v.user,
                    v.uid,
                    v.root.display()
                );
            }
            Ok(())
        }
        AlsCommand::MountAll(s) => {
            let repo = s.open(Lock::Shared)?;
            let als = AlsState::open(&repo, true)?;
            for (root, r) in ops::mount_all(&repo, &als, &engine(repo.objects_dir()))? {
                println!("{}\t{} layers mounted, {} keys added", root.display(), r.mounted, r.keys_added);
            }
            Ok(())
        }
        AlsCommand::View(a) => {
            let repo = a.store.open(Lock::Shared)?;
            let als = AlsState::open(&repo, true)?;
            let root = ops::canonical_root(&a.root, true)?;
            let (v, r) = ops::view(&repo, &als, &root, &a.user, a.target.as_deref(), &engine(repo.objects_dir()))
                .with_context(|| format!("view of {} for {}", root.display(), a.user))?;
            println!("{}	{}	{}", v.target.display(), v.user, root.display());
            let maps =
                |m: &[(u32, u32, u32)]| m.iter().map(|(i, o, n)| format!("{i}:{o}:{n}")).collect::<Vec<_>>().join(",");
            println!("uid map {}\tgid map {}", maps(&v.uid_map), maps(&v.gid_map));
            println!("{} layers mounted, {} keys added", r.mounted, r.keys_added);
            Ok(())
        }
        AlsCommand::ViewRm(a) => {
            let repo = a.store.open(Lock::Shared)?;
            let als = AlsState::open(&repo, true)?;
            let r = ops::view_rm(&repo, &als, &a.target, &engine(repo.objects_dir()), a.force)
                .with_context(|| format!("removing the view {}", a.target.display()))?;
            println!("{} layers unmounted", r.unmounted);
            Ok(())
        }
        AlsCommand::UmountAll(a) => {
            let repo = a.store.open(Lock::Shared)?;
            let als = AlsState::open(&repo, true)?;
            for (root, r) in ops::umount_all(&als, &repo, &engine(repo.objects_dir()), a.force)? {
                println!("{}\t{} layers unmounted", root.display(), r.unmounted);
            }
            Ok(())
        }
    }
}
