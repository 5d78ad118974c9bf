//! What the benchmarks that drive a `usm serve` child process share.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A `usm serve` child process; killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub base: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `usm serve` on a free loopback port over `data`, with `token` as its admin token.
#[allow(dead_code)] // each benchmark compiles this module; not every one calls every function
pub fn start_server(data: &Path, token: &str) -> ServerProcess {
    start_server_with(data, token, &[])
}

/// [`start_server`] with settings given as `USM_*` environment variables.
#[allow(clippy::disallowed_methods)] // polls a child process's port; nothing to wait on
pub fn start_server_with(data: &Path, token: &str, settings: &[(&str, String)]) -> ServerProcess {
    let port = free_port();
    // `USM_BENCH_SERVER_LOG=<filter>` shows the server's log with that filter (for the phases
    // of an upload: `info,usm::attachments=debug`); otherwise only its warnings, on stderr.
    let log = std::env::var("USM_BENCH_SERVER_LOG").ok();
    let mut command = Command::new(env!("CARGO_BIN_EXE_usm-under-test"));
    // The server reads every USM_* variable as configuration; it gets only the ones set here.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("USM_")) {
        command.env_remove(name);
    }
    let child = command
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            log.as_deref().unwrap_or("warn"),
        ])
        .arg("--data-dir")
        .arg(data)
        .env("USM_ADMIN_TOKEN", token)
        .env("USM_RATE_LIMIT_PER_SECOND", "0")
        .envs(settings.iter().map(|(name, value)| (name, value)))
        .stdout(if log.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap();
    let server = ServerProcess {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}
