//! The usm binary, built inside the test package so tests can run it as a real process
//! (`CARGO_BIN_EXE_usm`), kill it and restart it.

fn main() -> anyhow::Result<()> {
    usm_server::cli::main()
}
