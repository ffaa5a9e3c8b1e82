//! Binary entry point: hands argv to the CLI (which also answers as `mount.composefs`).
fn main() {
    std::process::exit(cfsmount::cli::main());
}
