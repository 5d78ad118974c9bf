//! Test guest: tries every ambient authority WASI could give — files, directories, environment,
//! arguments, sockets, clocks — and reports what it got. The host must grant none of it.

use usm_sdk::{Error, Hook, Input, Output, Step, export_step, json};

struct WasiProbe;

fn outcome<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(value) => format!("granted: {value:?}"),
        Err(error) => format!("denied: {error}"),
    }
}

impl Step for WasiProbe {
    const NAME: &'static str = "wasi-probe";
    const HOOKS: &'static [Hook] = &[Hook::Create];

    fn run(_input: Input) -> Result<Output, Error> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let args: Vec<String> = std::env::args().collect();
        let read_file = outcome(std::fs::read_to_string("/etc/passwd").map(|s| s.len()));
        let list_root = outcome(std::fs::read_dir("/").map(|d| d.count()));
        let list_cwd = outcome(std::fs::read_dir(".").map(|d| d.count()));
        let write_file = outcome(std::fs::write("probe.txt", b"x"));
        let connect = outcome(std::net::TcpStream::connect("127.0.0.1:80").map(|_| ()));
        let resolve =
            outcome(std::net::ToSocketAddrs::to_socket_addrs("localhost:80").map(|a| a.count()));
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX);
        Ok(Output::set_fields(json!({"probe": {
            "env_vars": env.len(),
            "args": args.len(),
            "read_file": read_file,
            "list_root": list_root,
            "list_cwd": list_cwd,
            "write_file": write_file,
            "connect": connect,
            "resolve": resolve,
            "wall_clock_secs": wall,
        }})))
    }
}

export_step!(WasiProbe);
