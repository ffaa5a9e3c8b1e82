//! The parent side: wait for the child (with the wall-clock timeout), read its status message,
//! reap it, and turn every way it can end into a [`SandboxError`].

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use super::status::{parse_status, KIND_JOB, KIND_OK, KIND_PANIC, KIND_SETUP, MAX_STATUS};
use super::SandboxError;

/// How often the parent starts the writeback of the child's output (`SandboxConfig::writeback_output`).
pub(super) const WRITEBACK_EVERY: Duration = Duration::from_millis(2);

pub(super) fn wait_child(
    pid: rustix::process::Pid,
    status_r: OwnedFd,
    timeout: Duration,
    writeback: Option<BorrowedFd<'_>>,
) -> Result<(), SandboxError> {
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // Cannot supervise it: kill and reap before reporting.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = crate::sys::wait_child(pid.as_raw_nonzero().get());
            return Err(SandboxError::Parent { step: "pidfd_open", source: e.into() });
        }
    };
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut eof = false;
    let mut timed_out = false;
    let mut oversized = false;
    let mut status_file = File::from(status_r);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        let mut ms = left.as_millis().min(i32::MAX as u128) as i32;
        if writeback.is_some() {
            ms = ms.min(WRITEBACK_EVERY.as_millis() as i32);
        }
        // After end-of-file on the status pipe only the exit is left to wait for (a hung-up pipe
        // stays "ready" and would make poll spin).
        let first = if eof { pidfd.as_fd() } else { status_file.as_fd() };
        let ready = crate::sys::sandbox::poll_two(first, pidfd.as_fd(), ms.max(1))
            .map_err(|e| SandboxError::Parent { step: "poll", source: e })?;
        if let Some(fd) = writeback {
            // Best effort: an error here only means the final fsync does all the work.
            let _ = crate::sys::writeback::start_writeback(fd);
        }
        if ready.a && !eof {
            eof = drain(&mut status_file, &mut buf);
            if buf.len() > MAX_STATUS {
                oversized = true;
                break;
            }
        }
        if ready.b {
            break;
        }
    }
    if timed_out || oversized {
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    }
    let ws = crate::sys::wait_child(pid.as_raw_nonzero().get())
        .map_err(|e| SandboxError::Parent { step: "waitpid", source: e.into() })?;
    if timed_out {
        return Err(SandboxError::Timeout { seconds: timeout.as_secs_f64() });
    }
    if oversized {
        return Err(SandboxError::MalformedStatus { reason: format!("status message over {MAX_STATUS} bytes") });
    }
    if !eof {
        drain(&mut status_file, &mut buf);
    }
    if let Some(sig) = ws.terminating_signal() {
        return Err(SandboxError::Killed { signal: sig, meaning: signal_meaning(sig) });
    }
    let code = ws.exit_status().unwrap_or(-1);
    let (kind, msg) = parse_status(&buf)?;
    match (kind, code) {
        (KIND_OK, 0) => Ok(()),
        (KIND_JOB, 1) => Err(SandboxError::Job(msg)),
        (KIND_SETUP, 2) => Err(SandboxError::Setup(msg)),
        (KIND_PANIC, 3) => Err(SandboxError::Panicked(msg)),
        (k, c) => Err(SandboxError::MalformedStatus { reason: format!("status kind {k} with exit code {c}") }),
    }
}

/// Reads what is available without blocking; returns true at end of file.
fn drain(f: &mut File, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_STATUS {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn signal_meaning(sig: i32) -> &'static str {
    match sig {
        libc::SIGSYS => {
            "a system call outside the seccomp policy (also how abort() ends after an allocation fails under the address-space limit)"
        }
        libc::SIGXCPU => "the CPU time limit",
        libc::SIGXFSZ => "the file size limit",
        libc::SIGKILL => "SIGKILL (CPU hard limit, out-of-memory killer or an administrator)",
        libc::SIGABRT => "abort (typically an allocation failing under the address-space limit)",
        libc::SIGSEGV | libc::SIGBUS => "a memory fault (stack overflow or a bug)",
        _ => "a signal",
    }
}
