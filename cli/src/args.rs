//! The command line: global options and one subcommand per action. Doc
//! comments here are the `--help` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Exit codes, shown at the end of `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    other failure (backend error, undecodable payload, patch does not apply, editor failed)
  2    usage: bad arguments, no or invalid backend URL, invalid path, invalid JSON input,
       payload over the backend's size limit
  3    not found: the path has no payload
  4    conflict: stale --version, concurrent edits, payload already exists (init)
  5    unavailable: server unreachable, timed out, lock not acquired in time
  6    --wait: a live instance rejected the new version (named on stderr)
  7    --wait: a live instance did not apply the new version in time (named on stderr)
  130  interrupted (Ctrl-C); 128+N for signal N

Paths are state paths such as /app/flags; the JSON lives at <PATH>/payload,
live instances under <PATH>/listeners, the write lock at <PATH>/lock.

Versions are ZooKeeper's mzxid of <PATH>/payload (zkCli's mZxid, shown in hex
there and after the version here) or etcd's mod_revision (etcdctl -w json).

Environment: SHAREDSTATE_BACKEND, SHAREDSTATE_TIMEOUT, SHAREDSTATE_LOCK_TIMEOUT,
SHAREDSTATE_OUTPUT, SHAREDSTATE_COLOR stand for the flags of the same name;
NO_COLOR and CLICOLOR_FORCE are honoured; VISUAL / EDITOR for `edit`.";

/// Inspect and change a sharedstate value from outside the application.
///
/// Backends: zk://host:2181[,host2:2181][/chroot], etcd://host:2379[,host2:2379],
/// memory:// (this process only: for self-tests, nothing outlives the command).
#[derive(Debug, Parser)]
#[command(name = "sharedstate", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Backend URL (required, here or in SHAREDSTATE_BACKEND).
    #[arg(long, global = true, env = "SHAREDSTATE_BACKEND", value_name = "URL")]
    pub backend: Option<String>,

    /// Set after parsing: whether --backend came from the command line (so
    /// suggested commands repeat it) rather than the environment.
    #[arg(skip)]
    pub backend_from_flag: bool,

    /// Bound on connecting and on each command's round trips (not on
    /// `watch` streaming or the time spent in an editor), e.g. 10s, 500ms, 2m.
    #[arg(long, global = true, env = "SHAREDSTATE_TIMEOUT", default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// How long `set` and `patch` wait for the state's write lock.
    #[arg(long, global = true, env = "SHAREDSTATE_LOCK_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub lock_timeout: Duration,

    /// Output format of every command: text for people, json for scripts
    /// (one JSON document; `watch`: one JSON object per line).
    #[arg(long, global = true, env = "SHAREDSTATE_OUTPUT", value_enum, default_value_t = OutputFormat::Text, value_name = "FORMAT")]
    pub output: OutputFormat,

    /// Short for --output json.
    #[arg(long, global = true)]
    pub json: bool,

    /// Colour output (also honours NO_COLOR and CLICOLOR_FORCE).
    #[arg(long, global = true, env = "SHAREDSTATE_COLOR", value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,

    /// The action.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments and environment (exits on a usage
    /// error or --help, as clap does).
    pub fn from_env() -> Cli {
        let matches = Cli::command().get_matches();
        let mut cli = match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(error) => error.exit(),
        };
        cli.backend_from_flag = backend_from_flag(&matches);
        cli
    }

    /// The output format, --json included.
    pub fn format(&self) -> OutputFormat {
        if self.json {
            OutputFormat::Json
        } else {
            self.output
        }
    }
}

/// Whether --backend was given on the command line (at the top or after
/// the subcommand).
pub fn backend_from_flag(matches: &clap::ArgMatches) -> bool {
    let from_line = |m: &clap::ArgMatches| {
        m.value_source("backend") == Some(clap::parser::ValueSource::CommandLine)
    };
    from_line(matches) || matches.subcommand().is_some_and(|(_, sub)| from_line(sub))
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// When the stream is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// One action.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the payload as pretty JSON
    ///
    /// The JSON goes to stdout and `version N` to stderr; with --json, one
    /// object {"path", "version", "value"} on stdout.
    Get(GetArgs),
    /// Replace the payload
    ///
    /// By default the write takes the state's lock (<PATH>/lock) and is a
    /// fenced conditional update, exactly like the engine's locked
    /// `update`, so it never races instances. With --version V it is one
    /// conditional write instead, failing (exit 4) when the payload is no
    /// longer at V.
    Set(SetArgs),
    /// Apply a JSON merge patch (RFC 7396) or a JSON Patch (RFC 6902)
    ///
    /// The patch is applied under the state's lock to the latest value and
    /// written with a fenced conditional update. A JSON object is a merge
    /// patch and an array a JSON Patch unless --merge or --json-patch says
    /// otherwise; anything else (a number, a string, null) is refused
    /// unless --merge says to replace the whole payload with it. A JSON
    /// Patch that does not apply (failed `test`, missing path) changes
    /// nothing (exit 1).
    Patch(PatchArgs),
    /// Edit the payload in $VISUAL or $EDITOR
    ///
    /// The edit is written back with a conditional update on the version
    /// that was opened; an edit that changes nothing writes nothing. If
    /// someone else changed the payload meanwhile, you are told, your edit
    /// is kept in a file until the command ends, and the editor re-opens on
    /// the new value; invalid JSON re-opens the editor on your text. Ctrl-C
    /// (or an editor killed by a signal) writes nothing and removes the
    /// drafts.
    Edit(EditArgs),
    /// Stream change sets, one line each
    ///
    /// Lines look like `v123 remote Added /globs/2 "firefox*"` (several
    /// changes of one version are joined with `; `), coloured on a
    /// terminal; --json prints one JSON object per line instead. Runs until
    /// Ctrl-C (exit 130) or --count. The watch does not register as an
    /// instance.
    Watch(WatchArgs),
    /// List the live instances of the state (also `instances`)
    #[command(visible_alias = "instances")]
    Listeners(ListenersArgs),
    /// Show the payload's version and size, the instances, the lock, and
    /// this command's own connection
    Status(StatusArgs),
    /// Create the payload
    ///
    /// Fails (exit 4) when it exists already, unless --if-missing. Refuses
    /// a path inside another state (a `payload` segment, or a state above).
    Init(InitArgs),
    /// Print a shell completion script
    ///
    /// e.g. `sharedstate completions bash > /etc/bash_completion.d/sharedstate`,
    /// or `source <(sharedstate completions zsh)`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff)
    ///
    /// e.g. `sharedstate man > /usr/local/share/man/man1/sharedstate.1`.
    Man,
}

impl Command {
    /// Whether the command talks to a backend (and so needs --backend).
    pub fn needs_backend(&self) -> bool {
        !matches!(self, Command::Completions(_) | Command::Man)
    }
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// State path, e.g. /app/flags.
    pub path: String,
}

/// `set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// State path, e.g. /app/flags.
    pub path: String,
    /// The new value as JSON, or - to read it from stdin.
    #[arg(value_name = "JSON|-")]
    pub value: String,
    /// Write only if the payload is still at this version (no lock taken);
    /// exit code 4 with the current version otherwise.
    #[arg(long, value_name = "V")]
    pub version: Option<u64>,
    #[command(flatten)]
    pub wait: WaitArg,
}

/// `--wait[=TIMEOUT]` of the commands that write.
#[derive(Debug, Args)]
pub struct WaitArg {
    /// Then wait until every live instance has applied or rejected the new
    /// version (default up to 60s; --wait=2m for longer). Exit 6 when one
    /// rejected it, 7 when one did not get to it in time, naming them.
    #[arg(id = "wait_timeout", long = "wait", value_name = "TIMEOUT", num_args = 0..=1, require_equals = true, default_missing_value = "60s", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// `patch`.
#[derive(Debug, Args)]
pub struct PatchArgs {
    /// State path, e.g. /app/flags.
    pub path: String,
    /// The patch as JSON, or - for stdin (the default when neither this nor
    /// --file is given).
    #[arg(value_name = "PATCH|-", conflicts_with = "file")]
    pub patch: Option<String>,
    /// Read the patch from this file.
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The patch is an RFC 7396 merge patch (the default for a JSON object).
    #[arg(long, conflicts_with = "json_patch")]
    pub merge: bool,
    /// The patch is an RFC 6902 JSON Patch (the default for a JSON array).
    #[arg(long)]
    pub json_patch: bool,
    #[command(flatten)]
    pub wait: WaitArg,
}

/// `edit`.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// State path, e.g. /app/flags.
    pub path: String,
    /// Editor command (default: $VISUAL, then $EDITOR, then vi); the file
    /// name is appended.
    #[arg(long, value_name = "CMD")]
    pub editor: Option<String>,
    /// How many times the editor is opened (invalid JSON, concurrent
    /// changes) before giving up.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Edit a payload that is not UTF-8 text: its invalid bytes are shown,
    /// and written back if you save a change, as U+FFFD. Without this,
    /// `edit` refuses such a payload rather than change bytes it cannot show.
    #[arg(long)]
    pub lossy: bool,
    #[command(flatten)]
    pub wait: WaitArg,
}

/// `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// State path, e.g. /app/flags.
    pub path: String,
    /// Exit after N change sets (and payload notices).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Print the current value first (not counted).
    #[arg(long)]
    pub initial: bool,
    /// Wait up to this long for the payload to be created instead of
    /// failing when there is none.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
}

/// `listeners`.
#[derive(Debug, Args)]
pub struct ListenersArgs {
    /// State path, e.g. /app/flags.
    pub path: String,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// State path, e.g. /app/flags.
    pub path: String,
}

/// `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// State path, e.g. /app/flags.
    pub path: String,
    /// The initial value as JSON, or - to read it from stdin.
    #[arg(value_name = "JSON|-")]
    pub value: String,
    /// Succeed without writing when the payload already exists.
    #[arg(long)]
    pub if_missing: bool,
}

/// Parses `1500ms`, `10s`, `2m`, `1h`, or a bare number of seconds
/// (fractions allowed: `0.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 10s, 500ms, 2m)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sharedstate").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn set_with_version_and_global_options_after_the_subcommand() {
        let cli = parse(&[
            "set",
            "/app/flags",
            "{\"a\":1}",
            "--version",
            "12",
            "--backend",
            "zk://h:2181",
            "--timeout",
            "3s",
        ])
        .expect("parses");
        assert_eq!(cli.backend.as_deref(), Some("zk://h:2181"));
        assert_eq!(cli.timeout, Duration::from_secs(3));
        match cli.command {
            Command::Set(set) => {
                assert_eq!(set.path, "/app/flags");
                assert_eq!(set.value, "{\"a\":1}");
                assert_eq!(set.version, Some(12));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn top_level_version_flag_still_prints_the_program_version() {
        let err = parse(&["--version"]).expect_err("version is an early exit");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
    }

    #[test]
    fn patch_kinds_exclude_each_other_and_file_excludes_inline() {
        assert!(parse(&["patch", "/a", "--merge", "--json-patch"]).is_err());
        assert!(parse(&["patch", "/a", "{}", "--file", "p.json"]).is_err());
        let cli = parse(&["patch", "/a", "-f", "p.json", "--json-patch"]).expect("parses");
        match cli.command {
            Command::Patch(p) => {
                assert!(p.json_patch && !p.merge);
                assert_eq!(p.file, Some(PathBuf::from("p.json")));
                assert_eq!(p.patch, None);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn wait_takes_an_optional_timeout_after_an_equals_sign() {
        let cli = parse(&["set", "/a", "{}", "--wait"]).expect("bare --wait");
        match cli.command {
            Command::Set(set) => assert_eq!(set.wait.timeout, Some(Duration::from_secs(60))),
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&["patch", "/a", "--wait=2m", "{}"]).expect("--wait=2m");
        match cli.command {
            Command::Patch(patch) => {
                assert_eq!(patch.wait.timeout, Some(Duration::from_secs(120)));
                assert_eq!(patch.patch.as_deref(), Some("{}"));
            }
            other => panic!("parsed as {other:?}"),
        }
        // Without `=`, the next word is not taken as the timeout.
        let cli = parse(&["set", "/a", "--wait", "{}"]).expect("value after --wait");
        match cli.command {
            Command::Set(set) => {
                assert_eq!(set.value, "{}");
                assert!(set.wait.timeout.is_some());
            }
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["edit", "/a"]).expect("no wait").command {
            Command::Edit(edit) => assert_eq!(edit.wait.timeout, None),
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse(&["set", "/a", "{}", "--wait=soon"]).is_err());
    }

    #[test]
    fn watch_options() {
        let cli = parse(&["watch", "/a", "--json", "--count", "2", "--wait", "1s"]).expect("ok");
        assert_eq!(cli.format(), OutputFormat::Json);
        match cli.command {
            Command::Watch(w) => {
                assert!(!w.initial);
                assert_eq!(w.count, Some(2));
                assert_eq!(w.wait, Some(Duration::from_secs(1)));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse(&["watch", "/a", "--count", "0"]).is_err());
    }

    #[test]
    fn missing_arguments_are_usage_errors() {
        let err = parse(&["set", "/a"]).expect_err("value missing");
        assert_eq!(err.exit_code(), 2);
        assert!(parse(&["frobnicate"]).is_err());
    }

    #[test]
    fn instances_is_the_listeners_command() {
        for name in ["listeners", "instances"] {
            let cli = parse(&[name, "/a"]).expect(name);
            assert!(matches!(cli.command, Command::Listeners(_)), "{name}");
        }
    }

    #[test]
    fn json_and_output_are_one_rule_for_every_command() {
        for command in ["get", "status", "listeners", "watch"] {
            let cli = parse(&[command, "/a", "--json"]).expect("--json everywhere");
            assert_eq!(cli.format(), OutputFormat::Json, "{command}");
            let cli = parse(&["--output", "json", command, "/a"]).expect("--output everywhere");
            assert_eq!(cli.format(), OutputFormat::Json, "{command}");
        }
        assert_eq!(
            parse(&["get", "/a"]).expect("ok").format(),
            OutputFormat::Text
        );
    }

    #[test]
    fn backend_source_is_known() {
        let matches = Cli::command()
            .try_get_matches_from(["sharedstate", "get", "/a", "--backend", "zk://h:1"])
            .expect("parses");
        assert!(backend_from_flag(&matches));
        let matches = Cli::command()
            .try_get_matches_from(["sharedstate", "get", "/a"])
            .expect("parses");
        assert!(!backend_from_flag(&matches));
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("3    not found"), "{help}");
        assert!(help.contains("SHAREDSTATE_BACKEND"), "{help}");
    }
}
