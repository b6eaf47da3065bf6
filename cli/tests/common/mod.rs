//! Drives the real `sharedstate` binary: every child process is bounded in
//! time and killed when the bound passes (or when the test panics).

#![allow(dead_code)] // each test binary uses its own subset

pub mod first_hour;
pub mod fleet;
pub mod scenarios;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sharedstate");

/// Bound on one short command (connect + a few round trips).
pub const COMMAND_BOUND: Duration = Duration::from_secs(60);

/// A finished command.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with everything printed unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "expected exit code {code}; stdout {:?}, stderr {:?}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless it exited 0.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }

    /// N of `PATH: version N`, `created at version N [(mZxid 0x..)]`.
    #[track_caller]
    pub fn version(&self) -> u64 {
        version_in(&self.stdout)
    }
}

/// The number after the first `version ` in `text`.
#[track_caller]
pub fn version_in(text: &str) -> u64 {
    text.split("version ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {text:?}"))
}

/// A fresh state path for one test.
pub fn unique(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("/cli-test/{name}-{}-{nanos:x}-{n}", std::process::id())
}

/// `sharedstate --backend URL ARGS...` (with `stdin` piped in when given),
/// within `COMMAND_BOUND`.
#[track_caller]
pub fn run(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    run_bounded(url, args, stdin, COMMAND_BOUND)
}

/// As [`run`], with an explicit bound.
#[track_caller]
pub fn run_bounded(url: &str, args: &[&str], stdin: Option<&str>, bound: Duration) -> Output {
    Run::new(args)
        .backend(url)
        .stdin(stdin)
        .bound(bound)
        .output()
}

/// One run of the binary, set up step by step: no `SHAREDSTATE_*`
/// variable from the test's own environment, `NO_COLOR=1` unless changed.
pub struct Run {
    command: Command,
    stdin: Option<String>,
    bound: Duration,
    label: String,
}

impl Run {
    pub fn new(args: &[&str]) -> Run {
        let mut command = Command::new(BIN);
        command.args(args).env("NO_COLOR", "1");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SHAREDSTATE_") {
                command.env_remove(name);
            }
        }
        Run {
            command,
            stdin: None,
            bound: COMMAND_BOUND,
            label: args.join(" "),
        }
    }

    /// `--backend URL` in front of the arguments.
    pub fn backend(mut self, url: &str) -> Run {
        let args: Vec<_> = self.command.get_args().map(|a| a.to_owned()).collect();
        let mut command = Command::new(BIN);
        command.arg("--backend").arg(url).args(args);
        for (name, value) in self.command.get_envs() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        self.command = command;
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Run {
        self.command.env(name, value);
        self
    }

    pub fn env_remove(mut self, name: &str) -> Run {
        self.command.env_remove(name);
        self
    }

    pub fn stdin(mut self, text: Option<&str>) -> Run {
        self.stdin = text.map(str::to_owned);
        self
    }

    pub fn bound(mut self, bound: Duration) -> Run {
        self.bound = bound;
        self
    }

    #[track_caller]
    pub fn output(mut self) -> Output {
        self.command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Guard(self.command.spawn().expect("the sharedstate binary starts"));
        if let Some(text) = &self.stdin {
            let mut pipe = child.0.stdin.take().expect("piped stdin");
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        let stdout = drain(child.0.stdout.take());
        let stderr = drain(child.0.stderr.take());
        let bound = self.bound;
        let status = wait(&mut child.0, bound).unwrap_or_else(|| {
            panic!(
                "`sharedstate {}` did not finish within {bound:?}",
                self.label
            )
        });
        Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        }
    }

    /// Starts it in the background, in its own process group (as a shell
    /// runs a foreground job), so [`Watch::interrupt_group`] reaches it and
    /// its children as Ctrl-C in a terminal would.
    #[track_caller]
    pub fn spawn_in_own_group(mut self) -> Watch {
        use std::os::unix::process::CommandExt;
        self.command.process_group(0);
        Watch::spawn(self.command)
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Waits up to `bound`; `None` when it is still running.
fn wait(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child when dropped (a panicking test leaves no process).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Lines of a child's pipe, as they come.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn follow<R: Read + Send + 'static>(pipe: Option<R>) -> Lines {
        let (tx, rx) = mpsc::channel();
        if let Some(pipe) = pipe {
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `bound` for a line containing `needle`.
    fn wait_for(&mut self, needle: &str, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Everything printed (the pipe must be closed: the child exited).
    fn all(mut self) -> String {
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        self.seen.iter().map(|line| format!("{line}\n")).collect()
    }
}

/// A `watch` running in the background.
pub struct Watch {
    child: Guard,
    stdout: Lines,
    stderr: Lines,
}

impl Watch {
    /// Starts `sharedstate --backend URL watch ARGS...` and waits (bounded)
    /// until it says it is watching.
    #[track_caller]
    pub fn start(url: &str, args: &[&str]) -> Watch {
        let mut command = Command::new(BIN);
        command
            .arg("--backend")
            .arg(url)
            .arg("watch")
            .args(args)
            .env("NO_COLOR", "1");
        let mut watch = Watch::spawn(command);
        if !watch.stderr.wait_for("watching ", COMMAND_BOUND) {
            panic!(
                "watch printed no \"watching\" line within {COMMAND_BOUND:?}; stderr: {:?}",
                watch.stderr.seen
            );
        }
        watch
    }

    /// Starts any long-running program (the process-monitor example) and
    /// waits (bounded) until its stdout has a line containing `ready`.
    #[track_caller]
    pub fn start_program(program: &std::path::Path, args: &[&str], ready: &str) -> Watch {
        let mut command = Command::new(program);
        command.args(args);
        let mut started = Watch::spawn(command);
        started.wait_for_stdout(ready, COMMAND_BOUND);
        started
    }

    /// Spawns `command` with piped output, no stdin, and no backend from
    /// the environment; killed when dropped.
    #[track_caller]
    pub fn spawn(mut command: Command) -> Watch {
        command
            .env_remove("SHAREDSTATE_BACKEND")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = Guard(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("{program} does not start: {e}")),
        );
        let stdout = Lines::follow(child.0.stdout.take());
        let stderr = Lines::follow(child.0.stderr.take());
        Watch {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits (bounded) for a stdout line containing `needle`.
    #[track_caller]
    pub fn wait_for_stdout(&mut self, needle: &str, bound: Duration) {
        if !self.stdout.wait_for(needle, bound) {
            panic!(
                "watch printed no {needle:?} within {bound:?}; stdout {:?}, stderr {:?}",
                self.stdout.seen, self.stderr.seen
            );
        }
    }

    /// Waits (bounded) for the watch to exit by itself (`--count`); its
    /// exit status and stdout.
    #[track_caller]
    pub fn finish(mut self, bound: Duration) -> (ExitStatus, String) {
        let status = wait(&mut self.child.0, bound);
        let Some(status) = status else {
            panic!(
                "watch did not exit within {bound:?}; stdout {:?}, stderr {:?}",
                self.stdout.seen, self.stderr.seen
            );
        };
        (status, self.stdout.all())
    }

    /// Waits (bounded) for a stderr line containing `needle`.
    #[track_caller]
    pub fn wait_for_stderr(&mut self, needle: &str, bound: Duration) {
        if !self.stderr.wait_for(needle, bound) {
            panic!(
                "printed no {needle:?} on stderr within {bound:?}; stdout {:?}, stderr {:?}",
                self.stdout.seen, self.stderr.seen
            );
        }
    }

    /// Sends SIGINT to the whole process group (what Ctrl-C in a terminal
    /// does: the command and the editor it runs both get it) and waits
    /// (bounded) for the exit; the exit status and everything on stderr.
    #[track_caller]
    pub fn interrupt_group(mut self, bound: Duration) -> (ExitStatus, String) {
        let group = format!("-{}", self.child.0.id());
        let sent = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -INT {group} failed");
        let Some(status) = wait(&mut self.child.0, bound) else {
            panic!(
                "did not exit within {bound:?} after SIGINT; stdout {:?}, stderr {:?}",
                self.stdout.seen, self.stderr.seen
            );
        };
        (status, self.stderr.all())
    }

    /// As [`Watch::interrupt`], also returning everything on stderr.
    #[track_caller]
    pub fn interrupt_all(self, bound: Duration) -> (ExitStatus, String, String) {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -INT failed");
        let mut this = self;
        let Some(status) = wait(&mut this.child.0, bound) else {
            panic!(
                "did not exit within {bound:?} after SIGINT; stdout {:?}, stderr {:?}",
                this.stdout.seen, this.stderr.seen
            );
        };
        (status, this.stdout.all(), this.stderr.all())
    }

    /// Sends SIGINT (what Ctrl-C does) and waits (bounded) for the exit.
    #[track_caller]
    pub fn interrupt(self, bound: Duration) -> (ExitStatus, String) {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -INT failed");
        self.finish(bound)
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}
