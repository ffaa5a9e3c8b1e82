//! Errors of the mount engine: typed, each naming the path, step or field and the errno.

use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::access::AccessError;
use super::fs_context::FsError;
use super::loopdev::LoopError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum MountError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    BadIdMap(#[from] super::request::BadIdMap),
    /// An input could not be opened, or the access policy refused it.
    #[error(transparent)]
    Access(#[from] AccessError),
    // Causes are part of the messages (not error `source`s), so `{:#}` prints each once.
    #[error("{}: not a composefs image ({cause})", path.display())]
    NotComposefs { path: PathBuf, cause: crate::erofs::format::HeaderError },
    #[error("{}: {what}: {errno}", path.display())]
    Source { path: PathBuf, what: &'static str, errno: Errno },
    #[error("{}: building the image failed: {cause}", path.display())]
    Build { path: PathBuf, cause: crate::build::BuildError },
    #[error("{}: image digest check failed: {cause}", path.display())]
    Digest { path: PathBuf, cause: AccessError },
    #[error("{}: loop device: {cause}", path.display())]
    Loop { path: PathBuf, cause: LoopError },
    #[error("{}: EROFS mount failed: {cause}", path.display())]
    Erofs { path: PathBuf, cause: FsError },
    #[error(transparent)]
    Idmap(#[from] IdmapError),
    #[error("overlay: {0}")]
    Overlay(FsError),
    #[error("object directory: {step}: {errno}{}", match *errno {
        Errno::INVAL => " (its filesystem cannot be idmapped, which privileged mode needs to read data with the caller's rights)",
        Errno::NOSYS => " (this kernel lacks mount_setattr: privileged mode needs idmapped mounts, Linux 5.12+)",
        _ => "",
    })]
    DataDir { step: &'static str, errno: Errno },
    #[error("overlay (legacy syntax, built in a private mount namespace): {reason}")]
    LegacyOverlay { reason: String },
    #[error("attaching the mount at {}: {step}: {errno}", target.display())]
    Attach { target: PathBuf, step: &'static str, errno: Errno },
    #[error("the new mount: {step}: {errno}")]
    MountAttrs { step: &'static str, errno: Errno },
    #[error("--fd-out: sending the mount fd failed: {errno}")]
    Send { errno: Errno },
    #[error("--fd-out: {reason}")]
    Courier { reason: String },
    #[error("state directory {}: {reason}", path.display())]
    StateDir { path: PathBuf, reason: String },
    #[error("mount record: {reason}")]
    Record { reason: String },
    #[error("{}: not a mount made by cfsmount ({reason})", target.display())]
    NotOurs { target: PathBuf, reason: &'static str },
    #[error("{what} {}: {errno}", path.display())]
    Dir { what: &'static str, path: PathBuf, errno: Errno },
    #[error("unmounting {}: {errno}", target.display())]
    Umount { target: PathBuf, errno: Errno },
    #[error("/proc: {reason}")]
    Proc { reason: String },
}

impl MountError {
    /// The image (or TOC/dumpfile) an error is about, when its message starts with that path.
    pub(crate) fn source_path(&self) -> Option<&Path> {
        match self {
            MountError::NotComposefs { path, .. }
            | MountError::Source { path, .. }
            | MountError::Build { path, .. }
            | MountError::Digest { path, .. }
            | MountError::Loop { path, .. }
            | MountError::Erofs { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Why an idmapped mount could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdmapError {
    #[error("idmap: both --uidmap and --gidmap are needed")]
    MissingMap,
    #[error("idmap: creating a user namespace: {step}: {errno}")]
    Create { step: &'static str, errno: Errno },
    #[error("idmap: writing {file} ({text}): {errno}")]
    WriteMap { file: &'static str, text: String, errno: Errno },
    #[error("idmap: opening /proc/CHILD/{file}: {errno}")]
    OpenHostMap { file: &'static str, errno: Errno },
    #[error("idmap: opening CHILD/{file} under a proc instance of our own: {errno}")]
    OpenOwnMap { file: &'static str, errno: Errno },
    #[error("idmap: /proc does not show this process's child (a /proc of another pid namespace, or none), and a proc instance of our own could not be mounted: {fs}")]
    ProcNotOurs { fs: Box<super::fs_context::FsError> },
    #[error("idmap: the new user namespace's child is not this process's child under a proc instance of our own")]
    NotOurChild,
    #[error("idmap: /proc/CHILD/{file}: {hidden} (where /proc is mounted hidepid=noaccess, invisible or ptraceable it hides the child); under a proc instance of our own: {errno}")]
    OpenMap { file: &'static str, hidden: Errno, errno: Errno },
    #[error("idmap: /proc/CHILD/{file}: {errno} (where /proc is mounted hidepid=noaccess, invisible or ptraceable it hides the child), and a proc instance of our own could not be mounted: {fs}")]
    ProcHidden { file: &'static str, errno: Errno, fs: Box<super::fs_context::FsError> },
    #[error("idmap: mount_setattr(MOUNT_ATTR_IDMAP): {errno}{}", match *errno {
        Errno::NOSYS => " (this kernel lacks mount_setattr: idmapped mounts need Linux 5.12+)",
        Errno::INVAL => " (this kernel cannot idmap EROFS mounts: Linux 5.19+)",
        _ => "",
    })]
    SetAttr { errno: Errno },
}
