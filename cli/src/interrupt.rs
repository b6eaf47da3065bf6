//! Ctrl-C (SIGINT), SIGTERM and SIGHUP: a command that is interrupted
//! cleans up (drafts, the session) and exits 128 + the signal number, as
//! shells expect (130 for Ctrl-C).

use crate::errors::{CliError, CliResult, Exit};

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted(pub u8);

/// SIGINT's number, for the exit code 130.
pub const SIGINT: u8 = 2;

impl Interrupted {
    /// The quiet exit 128 + signal (the shell prints nothing either).
    pub fn exit(self) -> CliError {
        CliError::new(Exit::Signal(self.0), "")
    }

    /// Exit 128 + signal with a note on stderr.
    pub fn exit_with(self, note: impl Into<String>) -> CliError {
        CliError::new(Exit::Signal(self.0), note)
    }
}

/// The signals a command listens to once installed: from then on they no
/// longer kill the process, so it must poll [`Interrupts::next`] (or check
/// a child's exit status) wherever it waits.
#[derive(Debug)]
pub struct Interrupts {
    #[cfg(unix)]
    streams: Vec<(u8, tokio::signal::unix::Signal)>,
}

impl Interrupts {
    /// Installs the handlers.
    ///
    /// # Errors
    ///
    /// Exit 1 when the OS refuses a handler.
    pub fn install() -> CliResult<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let kinds = [
                (SIGINT, SignalKind::interrupt()),
                (15, SignalKind::terminate()),
                (1, SignalKind::hangup()),
            ];
            let mut streams = Vec::new();
            for (number, kind) in kinds {
                let stream = signal(kind).map_err(|e| {
                    CliError::failure(format!("cannot install a signal handler: {e}"))
                })?;
                streams.push((number, stream));
            }
            Ok(Interrupts { streams })
        }
        #[cfg(not(unix))]
        {
            Ok(Interrupts {})
        }
    }

    /// Waits for the next signal (every signal that arrived since the
    /// last call counts).
    pub async fn next(&mut self) -> Interrupted {
        #[cfg(unix)]
        {
            let waits = self.streams.iter_mut().map(|(number, stream)| {
                let number = *number;
                Box::pin(async move {
                    stream.recv().await;
                    Interrupted(number)
                })
            });
            futures::future::select_all(waits).await.0
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Interrupted(SIGINT)
        }
    }

    /// A signal that already arrived and was not yet taken, if any.
    pub fn pending(&mut self) -> Option<Interrupted> {
        use futures::FutureExt;
        self.next().now_or_never()
    }
}

/// The signal that ended a child process, if one did.
pub fn killed_by(status: std::process::ExitStatus) -> Option<Interrupted> {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status
            .signal()
            .and_then(|n| u8::try_from(n).ok())
            .map(Interrupted)
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        None
    }
}
