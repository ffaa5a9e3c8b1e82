//! `deploy-root`: lays out a root filesystem tree for `setup-root` on a (mounted) disk:
//!
//! ```text
//! SYSROOT/composefs/objects/XX/YYYY...   file contents, named by fs-verity digest, verity on
//! SYSROOT/composefs/images/HEX           the EROFS image, named by its fs-verity digest
//! SYSROOT/state/deploy/HEX/etc/{upper,work}, .../var   the deployment's writable state
//! ```
//!
//! This is the repository layout of composefs-rs (and bootc's composefs backend), so either
//! tool's boot path finds the image. The image is built by the usual sandboxed builder
//! (`mkimage --from-dir --digest-store`), written under a temporary name and renamed to its
//! digest only when complete; a verified deployment is checked the way `setup-root` will
//! check it (every object present with the recorded fs-verity digest).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// What to deploy where.
#[derive(Debug)]
pub struct DeployRequest {
    /// The root filesystem tree.
    pub source: PathBuf,
    /// The mounted physical root that will be `/sysroot` at boot.
    pub sysroot: PathBuf,
    /// fs-verity on the image and the objects, checked (`composefs=HEX`); without it the
    /// kernel argument is `composefs=?HEX`.
    pub verity: bool,
}

#[derive(Debug)]
pub struct Deployed {
    pub hex: String,
    pub image: PathBuf,
    /// `composefs=HEX` or `composefs=?HEX`.
    pub kernel_arg: String,
    pub checked: Option<super::Checked>,
}

/// Deploys; on failure no image is left under its final name.
pub fn deploy(req: &DeployRequest) -> anyhow::Result<Deployed> {
    let repo = req.sysroot.join("composefs");
    let (images, objects) = (repo.join("images"), repo.join("objects"));
    for d in [&images, &objects] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let tmp = images.join(format!(".deploy-{}.img", std::process::id()));
    let res = build(&req.source, &objects, &tmp, req.verity);
    let file = match res {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let finish = || -> anyhow::Result<Deployed> {
        let digest = crate::fsverity::digest_file(&file).context("computing the image's fs-verity digest")?;
        let hex = crate::fsverity::to_hex(&digest);
        let checked = if req.verity {
            crate::fsverity::check_digest(file.as_fd(), &digest).context("the image's fs-verity measurement")?;
            let dir = std::fs::File::open(&objects).with_context(|| format!("opening {}", objects.display()))?;
            Some(super::objects::verify(&file, dir.as_fd()).with_context(|| {
                format!("checking the objects in {} (a verified boot needs fs-verity on each)", objects.display())
            })?)
        } else {
            None
        };
        let image = images.join(&hex);
        std::fs::rename(&tmp, &image).with_context(|| format!("renaming the image to {}", image.display()))?;
        let state = req.sysroot.join("state/deploy").join(&hex);
        for (d, mode) in [("etc/upper", 0o755), ("etc/work", 0o700), ("var", 0o755)] {
            let p = state.join(d);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .with_context(|| format!("chmod {}", p.display()))?;
        }
        let kernel_arg = format!("composefs={}{hex}", if req.verity { "" } else { "?" });
        Ok(Deployed { hex, image, kernel_arg, checked })
    };
    finish().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The one call into the image builder: a directory, its contents copied into `objects`.
fn build(source: &Path, objects: &Path, out: &Path, verity: bool) -> anyhow::Result<std::fs::File> {
    use crate::build::{build_image, BuildOptions, BuildRequest, InputFormat, Output, Source};
    let mut req = BuildRequest::new(InputFormat::Dir);
    req.digest_store = Some(objects.to_path_buf());
    let bopts = BuildOptions { enable_verity: verity, ..Default::default() };
    let (_, file) = build_image(&req, Source::Path(source.to_path_buf()), &Output::Path(out.to_path_buf()), &bopts)
        .with_context(|| format!("building the image of {}", source.display()))?;
    file.ok_or_else(|| anyhow::anyhow!("the builder returned no image"))
}
