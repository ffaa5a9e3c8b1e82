//! Command line: argument parsing, dispatch to the stages, and turning errors into one-line messages with exit codes.
//!
//! One file per command; this file only dispatches (by argv0 for `mount.composefs`, else by
//! subcommand).
mod doctor;
mod inspect;
mod mkimage;
pub(crate) mod mount;
pub(crate) mod mount_composefs;
mod verity;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cfsmount", version, about = "Build, verify and mount composefs images")]
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
    /// Report which kernel features (loop, EROFS, overlay, landlock, seccomp, verity) this machine offers.
    Doctor,
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
        Command::Doctor => doctor::run(),
    }
}

/// Entry point used by `main`: returns the process exit code.
pub fn main() -> i32 {
    // The privilege mode is decided once, first; privileged (setuid / file caps) execution is
    // made safe before anything else runs.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mode = match crate::privileged::early_init(&argv) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cfsmount: {e}");
            return 1;
        }
    };
    match run(argv, &mode) {
        Ok(()) => 0,
        Err(e) => {
            // One line: the context chain joined with ": ".
            eprintln!("cfsmount: {e:#}");
            1
        }
    }
}
