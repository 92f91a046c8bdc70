//! Typed errors at the edges, and the one place where they become statuses.
//!
//! Whatever went wrong inside a sandbox, the client sees only a status and a
//! short fixed body; the detail (a traceback, a trap) goes to the log with the
//! request id.

use http::StatusCode;

/// The boxed error a request body may fail with, whatever protocol it came
/// from (hyper's, or the uwsgi reader's I/O error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How one request's sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The instance could not be created (e.g. memory for it was refused).
    #[error("instantiating the app failed: {0:#}")]
    Instantiate(anyhow::Error),
    /// The guest trapped: a WebAssembly fault, `os._exit()`, a fatal CPython error.
    #[error("the app crashed: {0:#}")]
    Trap(anyhow::Error),
    /// The request ran past `--timeout`.
    #[error("the request ran past its {0:?} deadline")]
    DeadlineExceeded(std::time::Duration),
    /// The request used up its `--fuel` CPU budget.
    #[error("the request used up its CPU budget of {0} fuel units")]
    FuelExhausted(u64),
    /// The guest asked for more linear memory than `--memory` allows.
    #[error("the app hit the memory limit of {0} MiB")]
    MemoryExceeded(usize),
    /// The guest asked for memory the server's budget (`--memory-budget`,
    /// in MiB) had no room for: other requests hold it.
    #[error("the server's memory budget of {0} MiB had no room for the app's memory")]
    MemoryBudget(u64),
    /// The guest held more open files, directories and streams at once than
    /// `--max-open-files` allows.
    #[error("the app hit the limit of {0} open files and other handles")]
    TooManyHandles(usize),
    /// The app raised; the string is its traceback.
    #[error("the app raised an exception:\n{0}")]
    App(String),
    /// The guest broke the protocol with the host (e.g. an invalid status line).
    #[error("the app sent an invalid response: {0}")]
    GuestProtocol(String),
    /// The client went away while the app was still reading or writing.
    #[error("the client went away ({0})")]
    ClientGone(String),
    /// No sandbox slot freed up within `--queue-timeout`.
    #[error("no sandbox free within {0:?}")]
    Overloaded(std::time::Duration),
    /// The request body ended before its framing said it would, or its
    /// framing was malformed (a bad chunk, a forbidden trailer).
    #[error("the client sent a bad request body ({0})")]
    BadBody(String),
    /// The request body grew past `--max-body-bytes`.
    #[error("the request body exceeded {0} bytes")]
    BodyTooLarge(u64),
    /// The client sent no body bytes for `--body-timeout`.
    #[error("the client sent no body for {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The response body grew past `--max-response-bytes`; it was cut.
    #[error("the response exceeded {0} bytes and was cut off")]
    ResponseTooLarge(u64),
}

impl SandboxError {
    /// The status a client gets for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::DeadlineExceeded(_) | Self::FuelExhausted(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded(_) | Self::MemoryBudget(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            // Nobody is left to read it; the access log still wants a number.
            Self::ClientGone(_) => StatusCode::from_u16(499).expect("499 is a valid code"),
            Self::Instantiate(_)
            | Self::Trap(_)
            | Self::MemoryExceeded(_)
            | Self::TooManyHandles(_)
            | Self::App(_)
            | Self::ResponseTooLarge(_)
            | Self::GuestProtocol(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl SandboxError {
    /// The limit this failure hit, as `wsgi_wasm_limit_exceeded_total`
    /// labels it; `None` if it hit none.
    pub fn limit(&self) -> Option<&'static str> {
        Some(match self {
            Self::DeadlineExceeded(_) => "timeout",
            Self::FuelExhausted(_) => "fuel",
            Self::MemoryExceeded(_) => "memory",
            Self::TooManyHandles(_) => "files",
            Self::BodyTooLarge(_) | Self::BodyTimeout(_) => "body",
            Self::ResponseTooLarge(_) => "response",
            Self::Overloaded(_) => "queue",
            Self::MemoryBudget(_) => "memory_budget",
            _ => return None,
        })
    }

    /// How the app itself failed, as `wsgi_wasm_guest_errors_total` labels
    /// it: `exception`, `trap` or `exit` (`sys.exit()`, `os._exit()`).
    pub fn guest_error_kind(&self) -> Option<&'static str> {
        match self {
            Self::App(traceback) if traceback.contains("SystemExit") => Some("exit"),
            Self::App(_) => Some("exception"),
            Self::Trap(err) if err.downcast_ref::<wasmtime_wasi::I32Exit>().is_some() => Some("exit"),
            Self::Trap(_) | Self::Instantiate(_) => Some("trap"),
            _ => None,
        }
    }
}

/// The fixed body for an error status: its canonical reason and nothing else.
pub fn error_body(status: StatusCode) -> String {
    format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or("Error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_failure() {
        let d = std::time::Duration::from_secs(1);
        assert_eq!(SandboxError::DeadlineExceeded(d).status(), 504);
        assert_eq!(SandboxError::FuelExhausted(1).status(), 504);
        assert_eq!(SandboxError::Overloaded(d).status(), 503);
        assert_eq!(SandboxError::App("Traceback".into()).status(), 500);
        assert_eq!(SandboxError::MemoryExceeded(64).status(), 500);
        assert_eq!(SandboxError::BodyTooLarge(1).status(), 413);
        assert_eq!(SandboxError::BodyTimeout(d).status(), 408);
        assert_eq!(error_body(StatusCode::GATEWAY_TIMEOUT), "504 Gateway Timeout\n");
    }
}
