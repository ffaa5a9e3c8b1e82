//! `cfsmount als add|rm|ls|mount-all|umount-all`: the Additional Layer Store for podman
//! ([`crate::als`]); argument handling and printing only.

use std::path::PathBuf;

use anyhow::Context as _;

use super::oci::StoreArg;
use crate::als::ops;
use crate::als::root::Engine;
use crate::als::state::AlsState;
use crate::als::view::ViewRecord;
use crate::als::AlsError;
use crate::mount::access::Direct;
use crate::mount::Settings;
use crate::oci::layout::{Platform, Reference};
use crate::privileged::gate::{AlsViewAsk, Gate};
use crate::privileged::Mode;
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
    /// The user (name or uid). Required for root; an unprivileged caller (through the setuid
    /// helper) always gets its own view.
    #[arg(long)]
    pub user: Option<String>,
    /// Where to mount the view (default /run/cfsmount-als/USER, the only place for an
    /// unprivileged caller; every ancestor must be a root-owned directory only root can write).
    /// The user's storage.conf names it.
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(clap::Args, Debug)]
pub struct ViewRmArgs {
    /// The view's directory (required for root; an unprivileged caller's is
    /// /run/cfsmount-als/USER).
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
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

pub(crate) fn run(c: AlsCommand, mode: &Mode) -> anyhow::Result<()> {
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
        AlsCommand::View(a) => view_cmd(a, mode),
        AlsCommand::ViewRm(a) => view_rm_cmd(a, mode),
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

/// The setuid helper's checks for an unprivileged caller's view (the gate), and the engine its
/// mounts are made with: root's own (`Direct`), because everything a view is made of is read
/// from the root-owned store the gate checked, never from the caller.
struct ViewGate {
    gate: Gate,
    name: String,
    place: PathBuf,
    store: PathBuf,
}

impl ViewGate {
    fn new(
        mode: &Mode,
        user: Option<&str>,
        target: Option<&std::path::Path>,
        store: &StoreArg,
    ) -> anyhow::Result<Option<ViewGate>> {
        let Mode::Helper(ctx) = mode else { return Ok(None) };
        let gate = Gate::new((**ctx).clone());
        let store = match &store.store {
            Some(s) => s.clone(),
            None => crate::store::repo::Repo::default_root().map_err(anyhow::Error::msg)?,
        };
        let ask = AlsViewAsk { user, target, store: &store };
        let (name, place) = gate.check_als_view(&ask, std::path::Path::new(crate::als::view::VIEWS_DIR))?;
        Ok(Some(ViewGate { gate, name, place, store }))
    }
}

fn view_cmd(a: ViewArgs, mode: &Mode) -> anyhow::Result<()> {
    let vg = ViewGate::new(mode, a.user.as_deref(), a.target.as_deref(), &a.store)?;
    let (direct, kernel, fixed) = (Direct::new(), crate::mount::kernel::Real, Settings::fixed());
    let (access, settings) = super::mount::engine_for(mode);
    let (repo, root, user, target) = match &vg {
        Some(v) => {
            let repo = StoreArg { store: Some(v.store.clone()) }.open(Lock::Shared)?;
            // Compared with the recorded (canonical) roots as given: root resolves nothing the
            // caller names.
            let root = std::path::absolute(&a.root).with_context(|| format!("{}", a.root.display()))?;
            (repo, root, v.name.clone(), Some(v.place.clone()))
        }
        None => {
            let Some(user) = a.user.clone() else { anyhow::bail!("als view: --user is required") };
            (a.store.open(Lock::Shared)?, ops::canonical_root(&a.root, true)?, user, a.target.clone())
        }
    };
    let als = AlsState::open(&repo, true)?;
    let eng = match &vg {
        Some(_) => Engine { access: &direct, kernel: &kernel, settings: &fixed, objects: repo.objects_dir() },
        None => Engine { access: access.as_ref(), kernel: &kernel, settings: &settings, objects: repo.objects_dir() },
    };
    if vg.is_some() && !als.refs()?.iter().any(|r| r.root == root) {
        anyhow::bail!("{}: not an ALS root the store {} serves", root.display(), repo.root().display());
    }
    let approve = |rec: &ViewRecord, mounts: u64| -> Result<(), AlsError> {
        match &vg {
            Some(v) => {
                let m = rec.view_of();
                let r = v.gate.check_als_view_owner(&rec.target, rec.uid);
                r.and_then(|()| v.gate.check_als_view_mounts(&m.uid_map, &m.gid_map, mounts))
                    .map_err(|e| AlsError::Refused(e.to_string()))
            }
            None => Ok(()),
        }
    };
    let (v, r) = ops::view(&repo, &als, &root, &user, target.as_deref(), &eng, &approve)
        .with_context(|| format!("view of {} for {user}", root.display()))?;
    println!("{}\t{}\t{}", v.target.display(), v.user, root.display());
    let maps = |m: &[(u32, u32, u32)]| m.iter().map(|(i, o, n)| format!("{i}:{o}:{n}")).collect::<Vec<_>>().join(",");
    println!("uid map {}\tgid map {}", maps(&v.uid_map), maps(&v.gid_map));
    println!("{} layers mounted, {} keys added", r.mounted, r.keys_added);
    Ok(())
}

fn view_rm_cmd(a: ViewRmArgs, mode: &Mode) -> anyhow::Result<()> {
    let vg = ViewGate::new(mode, None, a.target.as_deref(), &a.store)?;
    let (direct, kernel, fixed) = (Direct::new(), crate::mount::kernel::Real, Settings::fixed());
    let (access, settings) = super::mount::engine_for(mode);
    let (repo, target) = match &vg {
        Some(v) => (StoreArg { store: Some(v.store.clone()) }.open(Lock::Shared)?, v.place.clone()),
        None => {
            let Some(t) = a.target.clone() else { anyhow::bail!("als view-rm: --target is required") };
            (a.store.open(Lock::Shared)?, t)
        }
    };
    let als = AlsState::open(&repo, true)?;
    let eng = match &vg {
        Some(_) => Engine { access: &direct, kernel: &kernel, settings: &fixed, objects: repo.objects_dir() },
        None => Engine { access: access.as_ref(), kernel: &kernel, settings: &settings, objects: repo.objects_dir() },
    };
    let approve = |rec: &ViewRecord| -> Result<(), AlsError> {
        match &vg {
            Some(v) => v.gate.check_als_view_owner(&rec.target, rec.uid).map_err(|e| AlsError::Refused(e.to_string())),
            None => Ok(()),
        }
    };
    let r = ops::view_rm(&repo, &als, &target, &eng, a.force, &approve)
        .with_context(|| format!("removing the view {}", target.display()))?;
    println!("{} layers unmounted", r.unmounted);
    Ok(())
}
