//! Command line: argument parsing, dispatch to the stages, and turning errors into one-line messages with exit codes.
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod boot;

#[derive(Parser)]
#[command(name = "cfsmount", version, about = "Build, verify and mount composefs images")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a composefs EROFS image from a TOC, an eStargz TOC, a dumpfile or a directory.
    Mkimage(crate::mkimage::Args),
    /// Read an image back and print it as a composefs dumpfile.
    Inspect(crate::erofs::InspectArgs),
    /// Mount an image (or a TOC/dumpfile built on the fly) with its object directories.
    Mount(crate::mount::Args),
    /// Unmount what `cfsmount mount` mounted.
    Umount(crate::mount::UmountArgs),
    /// fs-verity: enable, measure (kernel) or digest (userspace) files.
    #[command(subcommand)]
    Verity(crate::fsverity::Command),
    /// Report which kernel features (loop, EROFS, overlay, landlock, seccomp, verity) this machine offers.
    Doctor,
    /// Initramfs: mount the composefs root that the kernel command line names over /sysroot.
    SetupRoot(boot::SetupRootArgs),
    /// Lay out a root tree as composefs/images + composefs/objects for setup-root; prints the kernel argument.
    DeployRoot(boot::DeployRootArgs),
}

fn run(argv: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let argv0 = argv.first().map(std::path::Path::new).and_then(|p| p.file_name());
    if argv0.is_some_and(|n| n == "mount.composefs") {
        return crate::mount::helper_main(&argv[1..]);
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
        Command::Mkimage(a) => crate::mkimage::run(a),
        Command::Inspect(a) => crate::erofs::inspect(a),
        Command::Mount(a) => crate::mount::run(a),
        Command::Umount(a) => crate::mount::umount(a),
        Command::Verity(c) => crate::fsverity::run(c),
        Command::Doctor => crate::sandbox::doctor(),
        Command::SetupRoot(a) => boot::setup_root(a),
        Command::DeployRoot(a) => boot::deploy_root(a),
    }
}

/// Entry point used by `main`: returns the process exit code.
pub fn main() -> i32 {
    // Privileged (setuid / file caps) execution is made safe before anything else runs.
    if let Err(e) = crate::helper::early_init() {
        eprintln!("cfsmount: {e:#}");
        return 1;
    }
    match run(std::env::args_os().collect()) {
        Ok(()) => 0,
        Err(e) => {
            // One line: the context chain joined with ": ".
            eprintln!("cfsmount: {e:#}");
            1
        }
    }
}
