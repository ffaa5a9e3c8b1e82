//! Build script: compiles the seccomp policy (policy/seccomp.json, seccompiler JSON) into BPF blobs
//! in OUT_DIR for `include_bytes!`, and refuses the test-only `misbehave` feature in a release profile.
use std::{env, fs, path::PathBuf};

/// Filters the runtime expects in policy/seccomp.json (see src/sandbox.rs and docs/sandbox.md).
const FILTERS: &[&str] = &["parse", "files"];

fn main() {
    println!("cargo:rerun-if-changed=policy/seccomp.json");
    println!("cargo:rerun-if-changed=build.rs");

    // The misbehave hooks weaken the sandbox on request; they must never reach a release binary.
    let profile = env::var("PROFILE").unwrap_or_default();
    let debug_assertions = env::var("CARGO_CFG_DEBUG_ASSERTIONS").is_ok();
    if env::var_os("CARGO_FEATURE_MISBEHAVE").is_some() && (profile == "release" || !debug_assertions) {
        panic!("the `misbehave` feature is test-only and is refused in a release build");
    }

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let json = fs::read("policy/seccomp.json").expect("read policy/seccomp.json");
    let target = seccompiler::TargetArch::try_from(arch.as_str()).ok();
    for name in FILTERS {
        // An architecture seccompiler does not know gets empty blobs: the runtime then reports
        // seccomp as unavailable and refuses to run without --no-sandbox.
        let mut blob = Vec::new();
        if let Some(target) = target {
            let map = seccompiler::compile_from_json(json.as_slice(), target)
                .unwrap_or_else(|e| panic!("policy/seccomp.json: {e}"));
            let prog = map.get(*name).unwrap_or_else(|| panic!("policy/seccomp.json: missing filter {name:?}"));
            for ins in prog {
                blob.extend_from_slice(&ins.code.to_ne_bytes());
                blob.push(ins.jt);
                blob.push(ins.jf);
                blob.extend_from_slice(&ins.k.to_ne_bytes());
            }
        }
        fs::write(out.join(format!("seccomp-{name}.bpf")), blob).expect("write BPF blob");
    }
}
