//! How results look: change-set lines (text or JSON), listener tables,
//! status, timestamps. Text carries ANSI styles; the stream it is written
//! to (an `anstream::AutoStream`) strips them when colour is off.

use std::time::{SystemTime, UNIX_EPOCH};

use anstyle::{AnsiColor, Style};
use serde_json::{json, Value};
use sharedstate::{Change, ChangeSet, InstanceInfo, Origin, StateEvent, Version};

const VERSION: Style = Style::new().bold();
const ORIGIN: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Cyan)));
const ADDED: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green)));
const REMOVED: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)));
const MODIFIED: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Yellow)));
const NOTICE: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Magenta)));
const DIM: Style = Style::new().dimmed();

fn paint(style: Style, text: impl std::fmt::Display) -> String {
    format!("{style}{text}{style:#}")
}

/// The lower-case name of an origin, as in the JSON output.
pub fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Local => "local",
        Origin::Remote => "remote",
        Origin::Rebuilt => "resync",
        _ => "other",
    }
}

fn pointer(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

/// `Added /globs/2 "firefox*"`, `Modified /n 1 -> 2`, `Removed /x true`.
pub fn change_text(change: &Change) -> String {
    match change {
        Change::Added { path, value } => {
            format!("{} {} {value}", paint(ADDED, "Added"), pointer(path))
        }
        Change::Modified { path, old, new } => format!(
            "{} {} {old} -> {new}",
            paint(MODIFIED, "Modified"),
            pointer(path)
        ),
        Change::Removed { path, old } => {
            format!("{} {} {old}", paint(REMOVED, "Removed"), pointer(path))
        }
    }
}

/// `v123 remote Added /globs/2 "firefox*"`; several changes of one set are
/// joined with `; ` so a set is always one line.
pub fn change_set_text(set: &ChangeSet) -> String {
    let changes: Vec<String> = set.changes.iter().map(change_text).collect();
    format!(
        "{} {} {}",
        paint(VERSION, format!("v{}", set.version)),
        paint(ORIGIN, origin_name(set.origin)),
        changes.join("; ")
    )
}

/// One text line per event (no newline).
pub fn event_text(event: &StateEvent) -> String {
    match event {
        StateEvent::Changed(set) => change_set_text(set),
        StateEvent::Lagged { missed } => paint(
            NOTICE,
            format!("lagged: {missed} events dropped, resyncing"),
        ),
        StateEvent::Rejected { version, error } => format!(
            "{} {}",
            paint(VERSION, format!("v{version}")),
            paint(NOTICE, format!("rejected: {}", rejection_reason(error)))
        ),
        StateEvent::PayloadDeleted => paint(NOTICE, "payload deleted"),
        _ => paint(NOTICE, "unknown event"),
    }
}

/// One JSON object per event, tagged by `"event"`.
pub fn event_json(event: &StateEvent) -> Value {
    match event {
        StateEvent::Changed(set) => json!({
            "event": "changed",
            "version": set.version,
            "origin": origin_name(set.origin),
            "changes": set.changes,
        }),
        StateEvent::Lagged { missed } => json!({"event": "lagged", "missed": missed}),
        StateEvent::Rejected { version, error } => {
            json!({"event": "rejected", "version": version, "error": rejection_reason(error)})
        }
        StateEvent::PayloadDeleted => json!({"event": "deleted"}),
        _ => json!({"event": "unknown"}),
    }
}

/// Whether `--count` counts this event: change sets and payload notices,
/// not lag notices (their resync change set is counted).
pub fn counts(event: &StateEvent) -> bool {
    !matches!(event, StateEvent::Lagged { .. })
}

use crate::errors::one_line;

/// Why the engine rejected a payload, without the engine's operation
/// prefix (`decode failed: cannot decode value (key ...): `) and without
/// serde's location repeated after the engine's own `(line L, column C)`.
/// Text in another shape is kept as it is (one line).
pub fn rejection_reason(error: &str) -> String {
    let error = one_line(error);
    let reason = ["payload is not valid JSON", "payload does not match"]
        .iter()
        .find_map(|start| error.find(start).map(|at| &error[at..]))
        .unwrap_or(&error);
    // "(line 1, column 2): key must be a string at line 1 column 2"
    if let Some(open) = reason.find("(line ") {
        let location = &reason[open + 1..];
        if let Some(close) = location.find(')') {
            let repeated = format!(" at {}", location[..close].replace(',', ""));
            if let Some(stripped) = reason.strip_suffix(&repeated) {
                return stripped.to_owned();
            }
        }
    }
    reason.to_owned()
}

/// `version 12`; on ZooKeeper `version 4294967310 (mZxid 0x10000000e)`:
/// the version is the payload node's mzxid, which zkCli prints in hex.
pub fn version_text(backend: &str, version: Version) -> String {
    match mzxid_hex(backend, version) {
        Some(hex) => format!("version {version} (mZxid {hex})"),
        None => format!("version {version}"),
    }
}

/// Adds `"version": N` and, on ZooKeeper, `"mzxid": "0x..."` to `object`.
pub fn version_fields(
    backend: &str,
    version: Version,
    object: &mut serde_json::Map<String, Value>,
) {
    object.insert("version".into(), json!(version));
    if let Some(hex) = mzxid_hex(backend, version) {
        object.insert("mzxid".into(), json!(hex));
    }
}

fn mzxid_hex(backend: &str, version: Version) -> Option<String> {
    (backend == "zookeeper").then(|| format!("{:#x}", version.as_u64()))
}

/// `v12 initial {...}` for `watch --initial`.
pub fn initial_text(version: u64, value: &Value) -> String {
    format!(
        "{} {} {value}",
        paint(VERSION, format!("v{version}")),
        paint(ORIGIN, "initial")
    )
}

/// `2026-11-28T18:51:30Z` from milliseconds since the Unix epoch (UTC).
pub fn utc_timestamp(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// `3d4h`, `5m12s`, `40s`: how long ago `unix_ms` was.
pub fn age(unix_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(unix_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The listener table (header plus one row each), or a note when empty.
pub fn instances_table(listeners: &[InstanceInfo], now_ms: u64) -> String {
    if listeners.is_empty() {
        return "no live instances\n".to_owned();
    }
    let rows: Vec<[String; 4]> = listeners
        .iter()
        .map(|l| {
            [
                l.id.clone(),
                l.host.clone(),
                l.pid.to_string(),
                format!(
                    "{} ({} ago)",
                    utc_timestamp(l.since_unix_ms),
                    age(l.since_unix_ms, now_ms)
                ),
            ]
        })
        .collect();
    let header = ["ID", "HOST", "PID", "SINCE"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in std::iter::once(&header).chain(&rows).enumerate() {
        let line = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ");
        let line = line.trim_end();
        if i == 0 {
            out.push_str(&paint(DIM, line));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(text: &str) -> String {
        let mut out = Vec::new();
        let mut stream = anstream::StripStream::new(&mut out);
        std::io::Write::write_all(&mut stream, text.as_bytes()).expect("write");
        String::from_utf8(out).expect("utf8")
    }

    fn firefox() -> ChangeSet {
        ChangeSet {
            version: Version::new(123),
            origin: Origin::Remote,
            changes: vec![Change::Added {
                path: "/globs/2".into(),
                value: json!("firefox*"),
            }],
        }
    }

    #[test]
    fn a_change_set_is_one_line_in_the_documented_shape() {
        let line = strip(&event_text(&StateEvent::Changed(firefox())));
        assert_eq!(line, "v123 remote Added /globs/2 \"firefox*\"");
    }

    #[test]
    fn several_changes_share_the_line() {
        let set = ChangeSet {
            version: Version::new(7),
            origin: Origin::Local,
            changes: vec![
                Change::Modified {
                    path: "/interval_secs".into(),
                    old: json!(5),
                    new: json!(10),
                },
                Change::Removed {
                    path: "".into(),
                    old: json!({"a": "b\nc"}),
                },
            ],
        };
        let line = strip(&change_set_text(&set));
        assert_eq!(
            line,
            "v7 local Modified /interval_secs 5 -> 10; Removed / {\"a\":\"b\\nc\"}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn colour_is_only_styles_around_the_same_text() {
        let coloured = event_text(&StateEvent::Changed(firefox()));
        assert!(coloured.contains("\u{1b}["), "{coloured:?}");
        assert_ne!(coloured, strip(&coloured));
    }

    #[test]
    fn json_events_are_tagged() {
        let value = event_json(&StateEvent::Changed(firefox()));
        assert_eq!(
            value,
            json!({"event": "changed", "version": 123, "origin": "remote",
                   "changes": [{"op": "added", "path": "/globs/2", "value": "firefox*"}]})
        );
        assert_eq!(
            event_json(&StateEvent::Lagged { missed: 3 }),
            json!({"event": "lagged", "missed": 3})
        );
        assert_eq!(
            event_json(&StateEvent::PayloadDeleted),
            json!({"event": "deleted"})
        );
        assert!(!counts(&StateEvent::Lagged { missed: 1 }));
        assert!(counts(&StateEvent::PayloadDeleted));
    }

    #[test]
    fn notices() {
        let rejected = StateEvent::Rejected {
            version: Version::new(9),
            error: "expected value\nat line 1".into(),
        };
        assert_eq!(
            strip(&event_text(&rejected)),
            "v9 rejected: expected value at line 1"
        );
        assert_eq!(
            strip(&event_text(&StateEvent::PayloadDeleted)),
            "payload deleted"
        );
        assert_eq!(
            strip(&initial_text(4, &json!({"a": [1]}))),
            "v4 initial {\"a\":[1]}"
        );
    }

    #[test]
    fn zookeeper_versions_also_show_the_mzxid_as_zkcli_prints_it() {
        let v = Version::new(4_294_967_310);
        assert_eq!(
            version_text("zookeeper", v),
            "version 4294967310 (mZxid 0x10000000e)"
        );
        assert_eq!(version_text("etcd", Version::new(12)), "version 12");
        let mut object = serde_json::Map::new();
        version_fields("zookeeper", v, &mut object);
        assert_eq!(
            Value::Object(object),
            json!({"version": 4_294_967_310u64, "mzxid": "0x10000000e"})
        );
    }

    #[test]
    fn rejections_say_each_thing_once() {
        // As the engine words it (with and without its source's text).
        let with_source = "decode failed: cannot decode value (key /p/payload): payload is not valid JSON (line 1, column 2): key must be a string at line 1 column 2";
        assert_eq!(
            rejection_reason(with_source),
            "payload is not valid JSON (line 1, column 2): key must be a string"
        );
        let without = "decode failed: cannot decode value (key /p/payload): payload is not valid JSON (line 1, column 2)";
        assert_eq!(
            rejection_reason(without),
            "payload is not valid JSON (line 1, column 2)"
        );
        assert_eq!(rejection_reason("something\nelse"), "something else");
    }

    #[test]
    fn timestamps_and_ages() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_795_888_290_123), "2026-11-28T17:51:30Z");
        assert_eq!(age(0, 59_999), "59s");
        assert_eq!(age(0, 312_000), "5m12s");
        assert_eq!(age(0, 3_660_000), "1h1m");
        assert_eq!(age(0, 90_000_000), "1d1h");
        assert_eq!(age(10, 0), "0s");
    }

    #[test]
    fn listener_table_aligns_columns() {
        let listeners = vec![
            InstanceInfo {
                id: "a1".into(),
                host: "web-1".into(),
                pid: 42,
                since_unix_ms: 0,
                applied_version: None,
                seen_version: None,
                problem: None,
            },
            InstanceInfo {
                id: "b2".into(),
                host: "w".into(),
                pid: 31337,
                since_unix_ms: 60_000,
                applied_version: None,
                seen_version: None,
                problem: None,
            },
        ];
        let table = strip(&instances_table(&listeners, 120_000));
        assert_eq!(
            table,
            "ID  HOST   PID    SINCE\n\
             a1  web-1  42     1970-01-01T00:00:00Z (2m0s ago)\n\
             b2  w      31337  1970-01-01T00:01:00Z (1m0s ago)\n"
        );
        assert_eq!(instances_table(&[], 0), "no live instances\n");
    }
}
