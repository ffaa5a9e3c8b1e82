//! What this kernel offers the sandbox (cheap probes, no side effects).

use super::seccomp::POLICY_PARSE;

/// Highest landlock ABI this build knows the access rights of.
pub(crate) const LANDLOCK_KNOWN_ABI: i32 = 10;

/// What this kernel offers the sandbox (cheap probes, no side effects).
#[derive(Debug, Clone)]
pub struct KernelSupport {
    /// Landlock ABI version, or why there is none.
    pub landlock_abi: Result<i32, String>,
    /// Seccomp filter mode with SECCOMP_RET_KILL_PROCESS, or why not.
    pub seccomp: Result<(), String>,
    /// Whether build.rs compiled the policy for this architecture.
    pub policy_compiled: bool,
}

impl KernelSupport {
    pub fn probe() -> Self {
        let landlock_abi = match crate::sys::sandbox::landlock_abi() {
            Ok(v) => Ok(v),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                Err("landlock is built in but disabled (add landlock to the lsm= boot parameter)".into())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Err("landlock is not built into this kernel".into()),
            Err(e) => Err(format!("landlock probe failed: {e}")),
        };
        let seccomp = match rustix::thread::secure_computing_mode() {
            Err(e) => Err(format!("seccomp is not available (PR_GET_SECCOMP: {e})")),
            Ok(_) => crate::sys::sandbox::seccomp_kill_process_available()
                .map_err(|e| format!("seccomp lacks SECCOMP_RET_KILL_PROCESS ({e})")),
        };
        KernelSupport { landlock_abi, seccomp, policy_compiled: !POLICY_PARSE.is_empty() }
    }

    /// Reasons the sandbox would be incomplete on this machine (empty: fully available).
    pub fn missing(&self) -> Vec<String> {
        let mut m = Vec::new();
        if let Err(e) = &self.landlock_abi {
            m.push(e.clone());
        }
        if let Err(e) = &self.seccomp {
            m.push(e.clone());
        }
        if !self.policy_compiled {
            m.push(format!(
                "no seccomp policy compiled for {} (seccompiler knows x86_64, aarch64, riscv64)",
                std::env::consts::ARCH
            ));
        }
        m
    }
}

/// One line on whether the parser sandbox is complete here (`doctor`, `--version`).
pub fn sandbox_line(s: &KernelSupport) -> String {
    let missing = s.missing();
    if missing.is_empty() {
        let abi = s.landlock_abi.as_ref().map_or(0, |v| *v);
        format!("sandbox: complete (landlock ABI {abi}, seccomp allowlist)")
    } else {
        format!(
            "sandbox: WARNING incomplete ({}); mkimage refuses to run unless root passes --no-sandbox",
            missing.join("; ")
        )
    }
}
