//! `cfsmount doctor`: print which kernel features this machine offers ([`crate::probe`]).

pub(crate) fn run() -> anyhow::Result<()> {
    let mut out = String::new();
    for line in crate::probe::report() {
        out.push_str(&line);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}
