//! `/etc/cfsmount/setup-root.conf`: what `setup-root` does with `/etc`, `/var` and `/`.
//!
//! Lines `key = value`; `#` starts a comment; blank lines are ignored; a value may be put in
//! double quotes (so a file written for TOML's `key = "value"` reads the same). Unknown keys,
//! unknown values and repeated keys are errors: a boot configuration that is not understood is
//! not guessed at. Defaults (no file): the ones of composefs-rs's setup-root.
//!
//! | key | values | default |
//! |---|---|---|
//! | `etc` | `overlay` (writable, upper dir in the deployment's state directory), `transient` (writable, on tmpfs), `ro` | `overlay` |
//! | `var` | `bind` (the deployment's state directory bound), `transient`, `ro` | `bind` |
//! | `root` | `ro`, `transient` (writable `/` on tmpfs, lost at shutdown) | `ro` |
//! | `verify-objects` | `yes` (every object the image names is measured before mounting), `no` | `yes` |

use std::path::Path;

/// Default location, inside the initramfs.
pub const DEFAULT_PATH: &str = "/etc/cfsmount/setup-root.conf";
/// Largest configuration file read.
const MAX_BYTES: u64 = 64 * 1024;

/// How a directory of the new root is made writable (or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirMode {
    /// As in the image: read-only.
    ReadOnly,
    /// Overlay with an upper dir from the deployment's state directory (`etc`).
    Overlay,
    /// The state directory bound over it (`var`).
    Bind,
    /// Overlay with a tmpfs upper dir: writable, forgotten at shutdown.
    Transient,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub etc: DirMode,
    pub var: DirMode,
    /// `/` itself writable on tmpfs.
    pub transient_root: bool,
    /// Measure every object the image names before mounting (verified boots only).
    pub verify_objects: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { etc: DirMode::Overlay, var: DirMode::Bind, transient_root: false, verify_objects: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: larger than {MAX_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}:{line}: {reason}")]
    Syntax { path: String, line: usize, reason: String },
}

impl Config {
    /// Reads `path`; a missing file gives the defaults only when `missing_ok` (the default
    /// location), an explicit `--config` must exist.
    pub fn load(path: &Path, missing_ok: bool) -> Result<Config, ConfigError> {
        use std::io::Read;
        let p = path.display().to_string();
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing_ok => return Ok(Config::default()),
            Err(err) => return Err(ConfigError::Read { path: p, err }),
        };
        let mut text = String::new();
        f.take(MAX_BYTES + 1).read_to_string(&mut text).map_err(|err| ConfigError::Read { path: p.clone(), err })?;
        if text.len() as u64 > MAX_BYTES {
            return Err(ConfigError::TooLarge { path: p });
        }
        Config::parse(&text, &p)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut seen: Vec<&str> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let err = |reason: String| ConfigError::Syntax { path: origin.to_string(), line: n + 1, reason };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| err(format!("expected key = value, got {line:?}")))?;
            let (k, v) = (k.trim(), v.trim());
            let v = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(v);
            if seen.contains(&k) {
                return Err(err(format!("{k} given twice")));
            }
            let bad = |allowed: &str| err(format!("{k} = {v:?}: expected one of {allowed}"));
            match k {
                "etc" => {
                    c.etc = match v {
                        "overlay" => DirMode::Overlay,
                        "transient" => DirMode::Transient,
                        "ro" => DirMode::ReadOnly,
                        _ => return Err(bad("overlay, transient, ro")),
                    }
                }
                "var" => {
                    c.var = match v {
                        "bind" => DirMode::Bind,
                        "transient" => DirMode::Transient,
                        "ro" => DirMode::ReadOnly,
                        _ => return Err(bad("bind, transient, ro")),
                    }
                }
                "root" => {
                    c.transient_root = match v {
                        "ro" => false,
                        "transient" => true,
                        _ => return Err(bad("ro, transient")),
                    }
                }
                "verify-objects" => {
                    c.verify_objects = match v {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(bad("yes, no")),
                    }
                }
                _ => return Err(err(format!("unknown key {k:?} (etc, var, root, verify-objects)"))),
            }
            seen.push(k);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_values() {
        assert_eq!(Config::parse("", "t").unwrap(), Config::default());
        let c = Config::parse(
            "# comment\n etc = ro \nvar=\"transient\" # tmpfs\n\nroot = transient\nverify-objects = no\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            c,
            Config { etc: DirMode::ReadOnly, var: DirMode::Transient, transient_root: true, verify_objects: false }
        );
    }

    #[test]
    fn refusals_name_the_line() {
        for (text, line) in [
            ("etc = bind", 1),
            ("\nvar = overlay", 2),
            ("etc", 1),
            ("etc = ro\netc = overlay", 2),
            ("usr = ro", 1),
            ("root = rw", 1),
            ("verify-objects = maybe", 1),
        ] {
            match Config::parse(text, "f.conf") {
                Err(ConfigError::Syntax { line: l, path, .. }) => {
                    assert_eq!((l, path.as_str()), (line, "f.conf"), "{text}")
                }
                r => panic!("{text}: {r:?}"),
            }
        }
    }
}
