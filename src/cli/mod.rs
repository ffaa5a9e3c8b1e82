//! Command line: argument parsing, dispatch to the stages, and turning errors into one-line messages with exit codes.
//!
//! One file per command; this file only dispatches (by argv0 for `mount.composefs`, else by
//! subcommand; by argv0 also the drop-in personalities, `compat/`).
pub(crate) mod als;
mod compat;
mod doctor;
mod inspect;
pub mod layer;
mod mkimage;
pub(crate) mod mount;
pub(crate) mod mount_composefs;
pub mod oci;
mod verity;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod boot;

#[derive(Parser)]
#[command(
    name = "cfsmount",
    version,
    about = "Build, verify and mount composefs images",
    after_help = "Invoked under another name, cfsmount takes that tool's command line:\n  \
                  mount.composefs   mount -t composefs helper (util-linux argv, -o options)\n  \
                  mkcomposefs       drop-in for the reference mkcomposefs (image from a dumpfile or directory)\n  \
                  composefs-info    drop-in for the reference composefs-info (ls, objects, missing-objects, dump, measure-file)\n  \
                  composefs-dump    drop-in for the reference composefs-dump (read an image, write it again)\n\
                  See docs/dropin.md and cfsmount(8)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a composefs EROFS image from a TOC, an eStargz TOC, a dumpfile or a directory.
    Mkimage(mkimage::Args),
    /// Read an image back and print it as a composefs dumpfile.
    Inspect(inspect::Args),
    /// Mount an image (or a TOC/dumpfile built on the fly) with its object directories.
    Mount(mount::Args),
    /// Unmount what `cfsmount mount` mounted.
    Umount(mount::UmountArgs),
    /// fs-verity: enable, measure (kernel) or digest (userspace) files.
    #[command(subcommand)]
    Verity(verity::Command),
    /// Write a layer's original tar from its tar-split, its image and the objects (the way back).
    LayerTar(crate::layer::export::Args),
    /// Report which kernel features (loop, EROFS, overlay, landlock, seccomp, verity) this machine offers.
    Doctor,
    /// OCI images: import from an OCI layout into the store, mount, list, remove.
    #[command(subcommand)]
    Oci(oci::OciCommand),
    /// The store of images, layers and objects.
    #[command(subcommand)]
    Store(oci::StoreCommand),
    /// Additional Layer Store for podman: serve image layers as composefs mounts.
    #[command(subcommand)]
    Als(als::AlsCommand),
    /// Initramfs: mount the composefs root that the kernel command line names over /sysroot.
    SetupRoot(boot::SetupRootArgs),
    /// Lay out a root tree as composefs/images + composefs/objects for setup-root; prints the kernel argument.
    DeployRoot(boot::DeployRootArgs),
}

fn run(argv: Vec<std::ffi::OsString>, mode: &crate::privileged::Mode) -> anyhow::Result<()> {
    let argv0 = argv.first().map(std::path::Path::new).and_then(|p| p.file_name());
    if argv0.is_some_and(|n| n == "mount.composefs") {
        return mount_composefs::helper_main(&argv[1..], mode);
    }
    // `--version` (long form) also says whether the parser sandbox is complete on this kernel;
    // only asked for then (cheap probes, no side effects).
    let mut cmd = Cli::command();
    if argv.iter().any(|a| a == "--version") {
        let s = crate::sandbox::KernelSupport::probe();
        let text = format!("{}\n{}", env!("CARGO_PKG_VERSION"), crate::sandbox::sandbox_line(&s));
        cmd = cmd.long_version(Box::leak(text.into_boxed_str()) as &'static str);
    }
    let cli = match cmd.try_get_matches_from(argv).and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(c) => c,
        Err(e) => {
            // --help/--version print and succeed; usage errors exit 2 as clap does.
            e.exit();
        }
    };
    match cli.cmd {
        Command::Mkimage(a) => mkimage::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Mount(a) => mount::run(a, mode),
        Command::Umount(a) => mount::umount(a, mode),
        Command::Verity(c) => verity::run(c),
        Command::LayerTar(a) => crate::layer::export::run(a),
        Command::Doctor => doctor::run(),
        Command::Oci(c) => oci::run_oci(c, mode),
        Command::Store(c) => oci::run_store(c),
        Command::Als(c) => als::run(c, mode),
        Command::SetupRoot(a) => boot::setup_root(a),
        Command::DeployRoot(a) => boot::deploy_root(a),
    }
}

/// Writes one line to stderr. A closed or hung-up terminal is no reason to die halfway (eprintln!
/// would panic): the line is lost, the work is finished.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Entry point used by `main`: returns the process exit code.
pub fn main() -> i32 {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The drop-in personalities (mkcomposefs, composefs-info, composefs-dump) are the reference
    // tools run as the caller: they drop every privilege first thing (compat::main), instead of
    // the helper's early init (which serves mount/umount only).
    if let Some(p) = argv.first().and_then(|a| compat::Personality::from_argv0(a)) {
        return compat::main(p, argv);
    }
    // `oci import|ls|rm` and `store gc` touch nothing but the caller's own files: from a setuid
    // or file-capability install they become the caller for good (as the drop-ins do) and run as
    // an unprivileged copy would. Only `oci mount` goes on to the helper's early init.
    if oci::runs_as_caller(&argv) {
        if let Err(e) = crate::privileged::drop::drop_for_good() {
            say(format_args!("cfsmount: {e}"));
            return 1;
        }
        return exit_code(run(argv, &crate::privileged::Mode::Plain));
    }
    // The privilege mode is decided once, first; privileged (setuid / file caps) execution is
    // made safe before anything else runs.
    let mode = match crate::privileged::early_init(&argv) {
        Ok(m) => m,
        Err(e) => {
            say(format_args!("cfsmount: {e}"));
            return 1;
        }
    };
    exit_code(run(argv, &mode))
}

fn exit_code(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            // One line: the context chain joined with ": ".
            say(format_args!("cfsmount: {e:#}"));
            1
        }
    }
}
