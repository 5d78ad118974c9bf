//! The `usm` binary.

fn main() -> anyhow::Result<()> {
    usm_server::cli::main()
}
