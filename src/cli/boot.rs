//! `cfsmount setup-root` (initramfs) and `cfsmount deploy-root` (image-based installs): argument
//! handling and the one-line reports; the work is in `crate::boot`.
use std::path::PathBuf;

use anyhow::Context;

use crate::boot::config::{self, Config};
use crate::boot::setup::{self, Outcome, SetupRequest};

#[derive(clap::Args, Debug)]
pub struct SetupRootArgs {
    /// Where the physical root is mounted; the composefs root is mounted over it.
    #[arg(long, default_value = "/sysroot")]
    pub sysroot: PathBuf,
    /// Read the kernel command line from this file.
    #[arg(long, default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// Configuration (etc, var, root, verify-objects); the default path may be missing.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also report what the mount engine did.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(clap::Args, Debug)]
pub struct DeployRootArgs {
    /// The root filesystem tree to deploy.
    #[arg(long, value_name = "DIR")]
    pub from_dir: PathBuf,
    /// The mounted disk that is `/sysroot` at boot (gets composefs/ and state/).
    pub sysroot: PathBuf,
    /// No fs-verity (a filesystem without it): the kernel argument becomes composefs=?HEX.
    #[arg(long)]
    pub no_verity: bool,
}

pub fn setup_root(a: SetupRootArgs) -> anyhow::Result<()> {
    let run = || -> anyhow::Result<Outcome> {
        let cmdline = std::fs::read(&a.cmdline).with_context(|| format!("reading {}", a.cmdline.display()))?;
        let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
        let config = match &a.config {
            Some(p) => Config::load(p, false)?,
            None => Config::load(config::DEFAULT_PATH.as_ref(), true)?,
        };
        let req = SetupRequest { sysroot: a.sysroot.clone(), cmdline, config };
        Ok(setup::setup_root(&req)?)
    };
    match run().context("setup-root")? {
        Outcome::NotComposefs => {
            eprintln!("cfsmount: setup-root: no composefs= argument on the kernel command line, nothing to do");
        }
        Outcome::Mounted(m) => {
            if a.verbose {
                super::mount::print_outcome(&m.engine);
            }
            for w in &m.skipped {
                eprintln!("cfsmount: setup-root: {w}: image not present, tried the next one");
            }
            let mode = |d: config::DirMode| match d {
                config::DirMode::ReadOnly => "read-only",
                config::DirMode::Overlay => "overlay",
                config::DirMode::Bind => "bind",
                config::DirMode::Transient => "transient",
            };
            eprintln!(
                "cfsmount: setup-root: composefs image {} mounted at {} ({}{}; /etc {}, /var {}, / {}{})",
                m.hex,
                a.sysroot.display(),
                match (m.verity, m.image_has_verity) {
                    (true, _) => "verity=require",
                    (false, true) => "fs-verity not required (?), image digest measured by the kernel",
                    (false, false) => "fs-verity not required (?), image digest computed in userspace",
                },
                match m.objects {
                    Some(c) => format!(", {} objects of {} files measured", c.objects, c.files),
                    None => String::new(),
                },
                mode(m.config.etc),
                mode(m.config.var),
                if m.config.transient_root { "transient" } else { "read-only" },
                if m.physical_root_kept { ", physical root at sysroot/" } else { "" },
            );
        }
    }
    Ok(())
}

pub fn deploy_root(a: DeployRootArgs) -> anyhow::Result<()> {
    let req = crate::boot::deploy::DeployRequest { source: a.from_dir, sysroot: a.sysroot, verity: !a.no_verity };
    let d = crate::boot::deploy::deploy(&req).context("deploy-root")?;
    eprintln!(
        "cfsmount: deploy-root: image {} at {}{}",
        d.hex,
        d.image.display(),
        match d.checked {
            Some(c) => format!(" ({} objects of {} files with fs-verity)", c.objects, c.files),
            None => " (no fs-verity)".into(),
        }
    );
    println!("{}", d.kernel_arg);
    Ok(())
}
