//! The checker, in the Jepsen style: what the service holds at the end,
//! against what every writer and reader saw during the run.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::workload::{Attempt, Ended, Recording};

/// The verdict on one journal (or the counter).
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// What it is about (`zookeeper locked`, ...).
    pub name: String,
    /// Acknowledged writes.
    pub acknowledged: usize,
    /// Writes that failed with nothing applied.
    pub failed: usize,
    /// Writes whose outcome was unknown.
    pub indeterminate: usize,
    /// Of those, how many landed.
    pub indeterminate_landed: usize,
    /// Acknowledged writes missing from the final state.
    pub lost: usize,
    /// Ids present more than once.
    pub duplicated: usize,
    /// Definite failures that are present anyway.
    pub failed_but_present: usize,
    /// `read()` copies served later than `max_staleness` after the
    /// acknowledgement of the first write they lack.
    pub stale_reads: usize,
    /// `read()` samples (served or `Stale`).
    pub samples: usize,
    /// Samples that said `Stale` (honest).
    pub stale_said: usize,
    /// Copies that are not a prefix of the final state (divergence).
    pub diverged: usize,
    /// The longest time a writer went without a success while the probe
    /// showed the cluster accepting writes.
    pub longest_stall: Duration,
    /// Where that stall was: the writer, and the two successes around it.
    pub stall: Option<Stall>,
    /// Every instance reached the final state within `max_staleness` after
    /// the last heal.
    pub converged: bool,
    /// For the counter: final value, and the bounds it must lie in.
    pub counter: Option<(u64, u64, u64)>,
    /// Human-readable violations.
    pub violations: Vec<String>,
}

impl Verdict {
    /// Whether the run violated nothing.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// A writer's longest stretch without a success.
#[derive(Clone, Debug)]
pub struct Stall {
    /// The writer.
    pub writer: String,
    /// Its success before the stall.
    pub from: Instant,
    /// Its success after.
    pub to: Instant,
    /// The distinct errors its attempts met in between (the first few).
    pub errors: Vec<String>,
    /// How many times its updates ran their closure in between (conflicts
    /// lost to other writers show here), and the longest single attempt.
    pub runs: u32,
    /// The longest single attempt in between.
    pub longest_attempt: Duration,
}

/// An empty verdict, and the attempts of `writers`.
fn start<'a>(
    name: &str,
    recording: &'a Recording,
    writers: &[String],
) -> (Verdict, Vec<&'a Attempt>) {
    let verdict = Verdict {
        name: name.to_owned(),
        converged: true,
        ..Verdict::default()
    };
    let attempts = recording
        .attempts
        .iter()
        .filter(|a| writers.contains(&a.writer))
        .collect();
    (verdict, attempts)
}

/// Checks one journal: `final_ids` as the service holds it after the run,
/// `attempts` of its appenders, `samples` of its readers.
pub fn check_journal(
    name: &str,
    final_ids: &[String],
    recording: &Recording,
    state_path: &str,
    writers: &[String],
    max_staleness: Duration,
    session_timeout: Duration,
) -> Verdict {
    let (mut v, attempts) = start(name, recording, writers);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for id in final_ids {
        *count.entry(id.as_str()).or_default() += 1;
    }
    v.duplicated = count.values().filter(|&&n| n > 1).count();
    if v.duplicated > 0 {
        v.violations
            .push(format!("{} ids appear more than once", v.duplicated));
    }
    let position: HashMap<&str, usize> = final_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    // Ack instant per final position, for the stale-read check.
    let mut acked_at: Vec<Option<Instant>> = vec![None; final_ids.len()];
    for a in &attempts {
        let present = count.get(a.id.as_str()).copied().unwrap_or(0) > 0;
        match a.ended {
            Ended::Acked => {
                v.acknowledged += 1;
                match position.get(a.id.as_str()) {
                    Some(&p) => acked_at[p] = Some(a.ended_at),
                    None => {
                        v.lost += 1;
                        if v.violations.len() < 20 {
                            v.violations
                                .push(format!("acknowledged {} is missing", a.id));
                        }
                    }
                }
            }
            Ended::Failed => {
                v.failed += 1;
                if present {
                    v.failed_but_present += 1;
                    v.violations.push(format!(
                        "{} failed with nothing applied, but is present ({})",
                        a.id,
                        a.error.as_deref().unwrap_or("")
                    ));
                }
            }
            Ended::Indeterminate => {
                v.indeterminate += 1;
                if present {
                    v.indeterminate_landed += 1;
                }
            }
        }
    }
    // Suffix minimum of ack instants: the earliest acknowledged write at
    // position >= p.
    let mut earliest_from: Vec<Option<Instant>> = vec![None; final_ids.len() + 1];
    for p in (0..final_ids.len()).rev() {
        earliest_from[p] = match (acked_at[p], earliest_from[p + 1]) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    // Sampling granularity: a sample may lag its read by one period.
    let slack = super::workload::SAMPLE_EVERY;
    for sample in recording.samples.iter().filter(|s| s.state == state_path) {
        v.samples += 1;
        let Some((len, last)) = &sample.copy else {
            v.stale_said += 1;
            continue;
        };
        let prefix_ok = match (len.checked_sub(1), last) {
            (None, None) => true,
            (Some(i), Some(last)) => final_ids.get(i) == Some(last),
            _ => false,
        };
        if !prefix_ok {
            v.diverged += 1;
            if v.violations.len() < 20 {
                v.violations.push(format!(
                    "a copy of {len} ids ending in {last:?} is not a prefix of the final state"
                ));
            }
            continue;
        }
        let missing_since = earliest_from.get(*len).copied().flatten();
        if let Some(acked) = missing_since {
            let age = sample.at.saturating_duration_since(acked);
            if age > max_staleness + slack {
                v.stale_reads += 1;
                if v.violations.len() < 20 {
                    v.violations.push(format!(
                        "read() served a copy {age:?} after a write it lacks was acknowledged \
                         (max_staleness {max_staleness:?})"
                    ));
                }
            }
        }
    }
    (v.longest_stall, v.stall) = longest_stall(&attempts, &recording.probe_ok, writers);
    if v.longest_stall > session_timeout {
        v.violations.push(format!(
            "a writer stalled {:?} while the cluster accepted writes (session timeout {session_timeout:?}): {:?}",
            v.longest_stall,
            v.stall.as_ref().map(|s| (&s.writer, &s.errors)),
        ));
    }
    v
}

/// Checks the counter: acknowledged <= final <= acknowledged + indeterminate.
pub fn check_counter(
    name: &str,
    final_n: u64,
    recording: &Recording,
    writers: &[String],
    session_timeout: Duration,
) -> Verdict {
    let (mut v, attempts) = start(name, recording, writers);
    for a in &attempts {
        match a.ended {
            Ended::Acked => v.acknowledged += 1,
            Ended::Failed => v.failed += 1,
            Ended::Indeterminate => v.indeterminate += 1,
        }
    }
    let low = v.acknowledged as u64;
    let high = low + v.indeterminate as u64;
    v.counter = Some((final_n, low, high));
    if final_n < low {
        v.lost = (low - final_n) as usize;
        v.violations.push(format!(
            "the counter is {final_n}, below its {low} acknowledged increments"
        ));
    }
    if final_n > high {
        v.duplicated = (final_n - high) as usize;
        v.violations.push(format!(
            "the counter is {final_n}, above acknowledged + indeterminate = {high}"
        ));
    }
    (v.longest_stall, v.stall) = longest_stall(&attempts, &recording.probe_ok, writers);
    if v.longest_stall > session_timeout {
        v.violations.push(format!(
            "the counter stalled {:?} while the cluster accepted writes: {:?}",
            v.longest_stall,
            v.stall.as_ref().map(|s| &s.errors),
        ));
    }
    v
}

/// The longest gap between two successes of one writer, less the longest
/// probe outage inside it (the cluster itself refusing writes, as during an
/// election, is not the writer's stall), and where it was.
fn longest_stall(
    attempts: &[&Attempt],
    probe_ok: &[Instant],
    writers: &[String],
) -> (Duration, Option<Stall>) {
    let mut longest = Duration::ZERO;
    let mut at = None;
    for writer in writers {
        let mut successes: Vec<Instant> = attempts
            .iter()
            .filter(|a| &a.writer == writer && a.ended == Ended::Acked)
            .map(|a| a.ended_at)
            .collect();
        successes.sort();
        for pair in successes.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            let gap = to.saturating_duration_since(from);
            let stall = gap.saturating_sub(probe_outage(probe_ok, from, to));
            if stall > longest {
                longest = stall;
                at = Some((writer.clone(), from, to));
            }
        }
    }
    let stall = at.map(|(writer, from, to)| {
        let mut errors: Vec<String> = Vec::new();
        let mut runs = 0;
        let mut longest_attempt = Duration::ZERO;
        for a in attempts {
            if a.writer == writer && a.started >= from && a.started <= to {
                runs += a.runs;
                longest_attempt =
                    longest_attempt.max(a.ended_at.saturating_duration_since(a.started));
                if let Some(e) = &a.error {
                    if !errors.contains(e) && errors.len() < 4 {
                        errors.push(e.clone());
                    }
                }
            }
        }
        Stall {
            writer,
            from,
            to,
            errors,
            runs,
            longest_attempt,
        }
    });
    (longest, stall)
}

/// The longest time inside `[from, to]` without a probe success.
fn probe_outage(probe_ok: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for &at in probe_ok.iter().filter(|&&t| t > from && t < to) {
        longest = longest.max(at.saturating_duration_since(last));
        last = at;
    }
    longest.max(to.saturating_duration_since(last))
}

/// The table the issue asks for, one row per verdict.
pub fn table(verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | acknowledged | failed | indeterminate (landed) | lost | duplicated | stale reads (of samples; said Stale) | longest stall | converged | verdict |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for v in verdicts {
        let counter = v
            .counter
            .map(|(n, lo, hi)| format!(" (counter {n}, bounds {lo}..={hi})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {}{counter} | {} | {} | {} ({}) | {} | {} | {} (of {}; {}) | {:.1} s | {} | {} |",
            v.name,
            v.acknowledged,
            v.failed,
            v.indeterminate,
            v.indeterminate_landed,
            v.lost,
            v.duplicated,
            v.stale_reads,
            v.samples,
            v.stale_said,
            v.longest_stall.as_secs_f64(),
            if v.converged { "yes" } else { "no" },
            if v.ok() { "ok" } else { "VIOLATED" },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::workload::Sample;
    use super::*;

    fn attempt(writer: &str, id: &str, at: Instant, ended: Ended) -> Attempt {
        Attempt {
            writer: writer.into(),
            id: id.into(),
            started: at,
            ended_at: at,
            ended,
            error: None,
            runs: 1,
        }
    }

    #[test]
    fn lost_duplicated_and_stale_reads_are_caught() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let recording = Recording {
            attempts: vec![
                attempt("w", "w-1", t0, Ended::Acked),
                attempt("w", "w-2", t0 + ms(10), Ended::Acked),
                attempt("w", "w-3", t0 + ms(20), Ended::Failed),
                attempt("w", "w-4", t0 + ms(30), Ended::Indeterminate),
            ],
            samples: vec![
                // Lacks w-2 (acked at 10 ms), served at 5 s: stale.
                Sample {
                    state: "/s".into(),
                    at: t0 + ms(5000),
                    copy: Some((1, Some("w-1".into()))),
                },
                Sample {
                    state: "/s".into(),
                    at: t0 + ms(5000),
                    copy: None,
                },
                // Not a prefix.
                Sample {
                    state: "/s".into(),
                    at: t0 + ms(40),
                    copy: Some((1, Some("zzz".into()))),
                },
            ],
            probe_ok: vec![],
            read_errors: vec![],
        };
        let final_ids: Vec<String> = ["w-1", "w-2", "w-4", "w-4"].map(String::from).to_vec();
        let v = check_journal(
            "test",
            &final_ids,
            &recording,
            "/s",
            &["w".into()],
            Duration::from_secs(3),
            Duration::from_secs(10),
        );
        assert_eq!((v.acknowledged, v.failed, v.indeterminate), (2, 1, 1));
        assert_eq!(v.indeterminate_landed, 1);
        assert_eq!(v.duplicated, 1, "w-4 twice");
        assert_eq!(v.stale_reads, 1);
        assert_eq!(v.stale_said, 1);
        assert_eq!(v.diverged, 1);
        assert!(!v.ok());
        let clean = check_journal(
            "clean",
            &["w-1".to_owned(), "w-2".to_owned()],
            &Recording {
                attempts: recording.attempts[..2].to_vec(),
                ..Recording::default()
            },
            "/s",
            &["w".into()],
            Duration::from_secs(3),
            Duration::from_secs(10),
        );
        assert!(clean.ok(), "{:?}", clean.violations);
    }

    #[test]
    fn lost_acknowledged_writes_and_counter_bounds() {
        let t0 = Instant::now();
        let recording = Recording {
            attempts: vec![
                attempt("c", "", t0, Ended::Acked),
                attempt("c", "", t0, Ended::Acked),
                attempt("c", "", t0, Ended::Indeterminate),
            ],
            ..Recording::default()
        };
        let ok = check_counter("c", 3, &recording, &["c".into()], Duration::from_secs(10));
        assert!(ok.ok());
        let low = check_counter("c", 1, &recording, &["c".into()], Duration::from_secs(10));
        assert_eq!(low.lost, 1);
        let high = check_counter("c", 4, &recording, &["c".into()], Duration::from_secs(10));
        assert_eq!(high.duplicated, 1);
        let journal = check_journal(
            "j",
            &[],
            &Recording {
                attempts: vec![attempt("w", "w-1", t0, Ended::Acked)],
                ..Recording::default()
            },
            "/s",
            &["w".into()],
            Duration::from_secs(3),
            Duration::from_secs(10),
        );
        assert_eq!(journal.lost, 1);
    }

    #[test]
    fn stalls_exclude_cluster_outages() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let attempts = [
            attempt("w", "w-1", t0, Ended::Acked),
            attempt("w", "w-2", t0 + s(20), Ended::Acked),
        ];
        let refs: Vec<&Attempt> = attempts.iter().collect();
        // The probe failed from 2 s to 15 s: 13 s of outage, 7 s of stall.
        let probe = vec![t0 + s(1), t0 + s(2), t0 + s(15), t0 + s(19)];
        let (stall, at) = longest_stall(&refs, &probe, &["w".into()]);
        assert_eq!(stall, s(7));
        assert_eq!(at.map(|a| a.writer), Some("w".to_owned()));
    }
}
