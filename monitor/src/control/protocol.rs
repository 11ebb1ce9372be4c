//! Requests and responses on the control socket.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Watched processes, hooks and counters.
    Status,
    /// The daemon's ledger for one process.
    Ledger { pid: u32 },
    /// Apply every event in the ring buffer, then answer (other requests
    /// apply a bounded number first: see the engine's `DRAIN_BUDGET`);
    /// first waits out the hold after a recent scan (at most 50 ms).
    Sync,
    /// Reconcile every watched process with /proc now; answers what it fixed.
    Reconcile,
    /// The alerts firing now.
    Alerts,
    /// The Prometheus exposition (text), as `/metrics` serves it.
    Metrics,
    /// An iterator over the fds of any process (`fditer.rs`): the answer
    /// carries its fd (SCM_RIGHTS); an error when the daemon has none.
    FdIter { pid: u32 },
    /// A watched process's API calls: in flight, the `recent` last ones, loops, statistics.
    Calls {
        pid: u32,
        #[serde(default = "default_recent")]
        recent: usize,
    },
}

fn default_recent() -> usize {
    100
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            data: Some(data),
        }
    }

    pub fn data(value: &impl Serialize) -> Response {
        match serde_json::to_value(value) {
            Ok(data) => Response::ok(data),
            Err(e) => Response::error(format!("cannot encode the answer: {e}")),
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            data: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let json = serde_json::to_string(&Request::Ledger { pid: 7 }).unwrap();
        assert_eq!(json, r#"{"request":"ledger","pid":7}"#);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"request":"sync"}"#).unwrap(),
            Request::Sync
        );
        assert!(serde_json::from_str::<Request>(r#"{"request":"rm -rf"}"#).is_err());
    }
}
