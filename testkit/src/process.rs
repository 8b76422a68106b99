//! The `sidecar` binary as a child process, on a port the system picks: it
//! prints the addresses it bound on stderr, so no port is guessed (a port
//! found free and released may be taken again before the sidecar binds it).

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A cold start may compile large policies before it listens: minutes on a
/// busy 2-core machine. A process that exits is noticed at once.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// How to start the binary; see [`SidecarProcess::builder`].
#[derive(Debug)]
pub struct SidecarOptions {
    binary: PathBuf,
    admin: bool,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl SidecarOptions {
    /// The admin listener on a port of its own, instead of off.
    #[must_use]
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// A flag before `run` (`--log-format json`).
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The config every test writes: the listeners on ports the system
    /// picks, then `body` (tables only: top-level keys must come first).
    pub fn config(&self, body: &str) -> String {
        let admin = if self.admin { "127.0.0.1:0" } else { "off" };
        format!("listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"{admin}\"\n{body}")
    }

    /// Writes [`config`](Self::config) to `dir/sidecar.toml`, runs the
    /// binary on it and waits until it listens.
    ///
    /// # Panics
    /// If it cannot start, exits before listening, or does not listen
    /// within minutes; with its stderr.
    pub fn start(self, dir: &Path, body: &str) -> SidecarProcess {
        let config = dir.join("sidecar.toml");
        std::fs::write(&config, self.config(body))
            .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.binary.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        // Drained for the process's whole life: a full pipe would block it.
        let drain = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    for (prefix, which) in [
                        ("sidecar listening on ", Which::Base),
                        ("sidecar admin on ", Which::Admin),
                    ] {
                        if let Some(rest) = line.strip_prefix(prefix) {
                            let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                            let _ = tx.send((which, url));
                        }
                    }
                    lines.lock().expect("stderr lines").push(line);
                }
            })
        };
        let mut process = SidecarProcess {
            child,
            base: String::new(),
            admin: None,
            config,
            started: self,
            lines,
            drain: Some(drain),
        };
        let (mut base, mut admin) = (None, None);
        while base.is_none() || (process.started.admin && admin.is_none()) {
            match rx.recv_timeout(START_TIMEOUT) {
                Ok((Which::Base, url)) => base = Some(url),
                Ok((Which::Admin, url)) => admin = Some(url),
                Err(_) => panic!(
                    "the sidecar did not start:\n{}",
                    process.stderr_lines().join("\n")
                ),
            }
        }
        process.base = base.expect("listening");
        process.admin = admin;
        process
    }
}

#[derive(Clone, Copy)]
enum Which {
    Base,
    Admin,
}

/// The running binary; killed on drop if still running.
#[derive(Debug)]
pub struct SidecarProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`, as it printed.
    pub base: String,
    /// The admin listener's URL, with [`SidecarOptions::admin`].
    pub admin: Option<String>,
    config: PathBuf,
    started: SidecarOptions,
    lines: Arc<Mutex<Vec<String>>>,
    drain: Option<JoinHandle<()>>,
}

impl SidecarProcess {
    /// `binary` (`env!("CARGO_BIN_EXE_sidecar")`), not started yet.
    pub fn builder(binary: impl Into<PathBuf>) -> SidecarOptions {
        SidecarOptions {
            binary: binary.into(),
            admin: false,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// The admin listener's URL.
    ///
    /// # Panics
    /// If it was started without one.
    pub fn admin(&self) -> &str {
        self.admin.as_deref().expect("started with .admin()")
    }

    /// Its config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// A config with the same preamble as the one it started with, for a
    /// test that rewrites the file.
    pub fn config(&self, body: &str) -> String {
        self.started.config(body)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Its stderr so far (all of it once it has exited), line by line.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines.lock().expect("stderr lines").clone()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// The last `n` lines of its stderr, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().expect("stderr lines");
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then its exit status once it has stopped (and its stderr
    /// is complete).
    ///
    /// # Panics
    /// If it does not exit within `within`.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -TERM: {sent}");
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit {within:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        status
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
