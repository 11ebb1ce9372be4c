//! API calls of one process: requests paired with their responses on each
//! stream (a plain socket, or a TLS session), classified, with per-kind
//! statistics and the poll loops nova runs after state changes.

pub mod classify;
pub mod loops;
pub mod view;

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
};

pub use classify::CallKind;
pub use loops::PollLoop;
use serde::{Deserialize, Serialize};

use crate::{
    bounded::push_bounded,
    fastmap::FastMap,
    http::parse::{self, Parsed, Request, Response},
    ledger::sockets::Histogram,
};

/// Finished calls kept per process (older ones live on only in the statistics).
const RECENT: usize = 512;
/// Calls waiting for an answer kept per process. More means answers are not
/// being seen (a stream read by means the probes do not hook); the oldest go.
const MAX_IN_FLIGHT: usize = 1024;
/// A request line split over two writes is kept this long at most.
const MAX_SPLIT_LINE: usize = 256;

/// A call as births and sockets refer to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRef {
    pub id: u64,
    pub kind: CallKind,
}

/// Where a call's bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKey {
    Fd(u32),
    Ssl(u64),
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEnd {
    Answered,
    /// Its connection closed before an answer came.
    ConnectionClosed,
    /// Dropped unanswered to keep the in-flight list bounded (counted in
    /// `parse.in_flight_dropped`): its answer was never seen.
    Dropped,
    /// Its answer came but was not seen: a later request went out on the
    /// same connection (counted in `parse.answers_unseen`).
    AnswerUnseen,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub id: u64,
    pub tid: u32,
    pub fd: Option<u32>,
    pub inode: u64,
    pub tls: bool,
    pub endpoint: Option<SocketAddr>,
    pub request: Request,
    pub kind: CallKind,
    pub pattern: String,
    pub node: Option<String>,
    pub instance: Option<String>,
    /// State changes: the requested target (`active`, `power off`, ...).
    pub target: Option<&'static str>,
    pub started_ns: u64,
    pub finished_ns: Option<u64>,
    pub response: Option<Response>,
    pub end: Option<CallEnd>,
}

impl Call {
    pub fn reference(&self) -> CallRef {
        CallRef {
            id: self.id,
            kind: self.kind,
        }
    }
}

/// Where a request came from.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    pub tid: u32,
    pub fd: Option<u32>,
    pub inode: u64,
    pub tls: bool,
    pub endpoint: Option<SocketAddr>,
    pub ts_ns: u64,
}

#[derive(Debug, Default)]
struct Stream {
    /// Calls sent and not answered yet, oldest first.
    waiting: VecDeque<u64>,
    /// The start of a request line that came without its end (a tiny
    /// first write): the next write completes it.
    split_line: Option<Vec<u8>>,
    /// A state change whose body (its target) is still to come.
    body_for: Option<u64>,
}

/// Count and latency of one kind of call with one status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallStats {
    pub count: u64,
    pub latency: Histogram,
}

/// What the parser made of the data it saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParseCounters {
    pub requests: u64,
    pub responses: u64,
    pub not_http: u64,
    /// Responses with no request waiting on their stream.
    pub unmatched_responses: u64,
    pub truncated_headers: u64,
    /// Unanswered calls dropped at the in-flight limit.
    pub in_flight_dropped: u64,
    /// Calls ended by a later request on their connection, their answer unseen.
    #[serde(default)]
    pub answers_unseen: u64,
}

#[derive(Debug, Default)]
pub struct CallLog {
    next_id: u64,
    in_flight: BTreeMap<u64, Call>,
    recent: VecDeque<Call>,
    streams: FastMap<StreamKey, Stream>,
    /// (kind, status; 0 for calls without an answer) -> statistics.
    pub stats: BTreeMap<(CallKind, u16), CallStats>,
    pub loops: loops::Loops,
    pub parse: ParseCounters,
    /// Requests that carried a token over plain HTTP, per endpoint.
    pub plaintext_tokens: BTreeMap<Option<SocketAddr>, PlaintextTokens>,
}

/// Tokens sent in clear to one endpoint (the values are never kept).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlaintextTokens {
    pub count: u64,
    pub last_ns: u64,
    pub last_call: Option<CallRef>,
}

impl CallLog {
    /// A message start written to a stream: new calls (pipelined requests
    /// are several), or the body of the last one.
    pub fn written(
        &mut self,
        key: StreamKey,
        bytes: &[u8],
        continuation: bool,
        origin: Origin,
    ) -> Vec<CallRef> {
        let stream = self.streams.entry(key).or_default();
        if continuation {
            if let Some(mut line) = stream.split_line.take() {
                line.extend_from_slice(bytes);
                return self.requests(key, &line, origin);
            }
            if let Some(id) = stream.body_for.take() {
                self.set_target(id, parse::body_target(bytes));
            }
            return Vec::new();
        }
        self.requests(key, bytes, origin)
    }

    fn requests(&mut self, key: StreamKey, bytes: &[u8], origin: Origin) -> Vec<CallRef> {
        let (complete, partial) = match parse::requests(bytes) {
            Parsed::Complete(found) => (found, None),
            Parsed::Partial(found, partial) => (found, Some(partial)),
            Parsed::NotHttp if looks_like_split_line(bytes) => {
                self.streams.entry(key).or_default().split_line = Some(bytes.to_vec());
                return Vec::new();
            }
            Parsed::NotHttp => {
                self.parse.not_http += 1;
                return Vec::new();
            }
        };
        self.answers_unseen(key, origin.ts_ns);
        let mut started = Vec::new();
        for (request, body) in complete {
            let has_body = request.headers.content_length.unwrap_or(0) > 0;
            let call = self.start(key, request, origin);
            let wants_target = call.kind.starts_a_wait() && has_body;
            if wants_target && body.len > 0 {
                self.set_target(
                    call.id,
                    parse::body_target(&bytes[body.offset..body.offset + body.len]),
                );
            } else if wants_target {
                self.streams.entry(key).or_default().body_for = Some(call.id);
            }
            started.push(call);
        }
        if let Some(partial) = partial {
            // Headers cut by the capture limit: the request line and the
            // whitelisted headers before the cut are what there is.
            self.parse.truncated_headers += 1;
            let wants_target = partial.headers.content_length.unwrap_or(0) > 0;
            let call = self.start(key, partial, origin);
            if wants_target && call.kind.starts_a_wait() {
                self.streams.entry(key).or_default().body_for = Some(call.id);
            }
            started.push(call);
        }
        started
    }

    /// A new request on `key` at `ts_ns`: clients of OpenStack do not
    /// pipeline, so the calls still waiting there were answered, unseen (a
    /// record lost to a full ring, an answer the parser could not read).
    /// Left waiting, each later answer would go to the call before it.
    fn answers_unseen(&mut self, key: StreamKey, ts_ns: u64) {
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let unseen: Vec<u64> = stream.waiting.drain(..).collect();
        for id in unseen {
            self.parse.answers_unseen += 1;
            self.finish(id, ts_ns, None, CallEnd::AnswerUnseen);
        }
    }

    fn start(&mut self, key: StreamKey, request: Request, origin: Origin) -> CallRef {
        self.parse.requests += 1;
        self.next_id += 1;
        let classified = classify::classify(&request.method, &request.path);
        let call = Call {
            id: self.next_id,
            tid: origin.tid,
            fd: origin.fd,
            inode: origin.inode,
            tls: origin.tls,
            endpoint: origin.endpoint,
            request,
            kind: classified.kind,
            pattern: classified.pattern,
            node: classified.node,
            instance: classified.instance,
            target: None,
            started_ns: origin.ts_ns,
            finished_ns: None,
            response: None,
            end: None,
        };
        let reference = call.reference();
        if call.request.token && !call.tls {
            let seen = self.plaintext_tokens.entry(call.endpoint).or_default();
            seen.count += 1;
            seen.last_ns = call.started_ns;
            seen.last_call = Some(reference);
        }
        self.loops.call_started(&call);
        let stream = self.streams.entry(key).or_default();
        stream.waiting.push_back(call.id);
        self.in_flight.insert(call.id, call);
        if self.in_flight.len() > MAX_IN_FLIGHT
            && let Some(oldest) = self.in_flight.keys().next().copied()
        {
            self.parse.in_flight_dropped += 1;
            for stream in self.streams.values_mut() {
                stream.waiting.retain(|id| *id != oldest);
            }
            self.finish(oldest, origin.ts_ns, None, CallEnd::Dropped);
        }
        reference
    }

    fn set_target(&mut self, id: u64, target: Option<&'static str>) {
        if let Some(call) = self
            .in_flight
            .get_mut(&id)
            .or_else(|| self.recent.iter_mut().find(|c| c.id == id))
        {
            call.target = target;
            self.loops.target_known(id, target);
        }
    }

    /// A message start read from a stream: the answer to its oldest call.
    pub fn read(&mut self, key: StreamKey, bytes: &[u8], ts_ns: u64) {
        let Some(response) = parse::response(bytes) else {
            self.parse.not_http += 1;
            return;
        };
        self.parse.responses += 1;
        let Some(id) = self.streams.get_mut(&key).and_then(|s| s.waiting.pop_front()) else {
            self.parse.unmatched_responses += 1;
            return;
        };
        self.finish(id, ts_ns, Some(response), CallEnd::Answered);
    }

    fn finish(&mut self, id: u64, ts_ns: u64, response: Option<Response>, end: CallEnd) {
        let Some(mut call) = self.in_flight.remove(&id) else {
            return;
        };
        call.finished_ns = Some(ts_ns);
        let status = response.as_ref().map_or(0, |r| r.status);
        call.response = response;
        call.end = Some(end);
        let stats = self.stats.entry((call.kind, status)).or_default();
        stats.count += 1;
        // The next request's time bounds an unseen answer's, no more.
        if end != CallEnd::AnswerUnseen {
            stats
                .latency
                .observe(ts_ns.saturating_sub(call.started_ns) as f64 / 1e6);
        }
        push_bounded(&mut self.recent, call, RECENT);
    }

    /// A stream ended (its fd closed): calls still waiting never get an answer.
    pub fn closed(&mut self, key: StreamKey, ts_ns: u64) {
        if let Some(stream) = self.streams.remove(&key) {
            for id in stream.waiting {
                self.finish(id, ts_ns, None, CallEnd::ConnectionClosed);
            }
        }
    }

    /// The call a thread was waiting on at `ts_ns`, if any (the newest). A
    /// creation applied late (held back on another CPU until the next
    /// drain) still names the call in flight at its birth, even one that
    /// has finished since: only calls finished after `ts_ns` are looked at
    /// among the recent ones, so an on-time creation costs one comparison.
    pub fn in_flight_on(&self, tid: u32, ts_ns: u64) -> Option<CallRef> {
        let open_then = |c: &&Call| c.tid == tid && c.started_ns <= ts_ns;
        self.in_flight
            .values()
            .rev()
            .find(open_then)
            .or_else(|| {
                self.recent
                    .iter()
                    .rev()
                    .take_while(|c| c.finished_ns.is_some_and(|f| f > ts_ns))
                    .find(open_then)
            })
            .map(Call::reference)
    }

    pub fn find(&self, id: u64) -> Option<&Call> {
        self.in_flight
            .get(&id)
            .or_else(|| self.recent.iter().rev().find(|c| c.id == id))
    }

    pub fn in_flight(&self) -> impl Iterator<Item = &Call> {
        self.in_flight.values()
    }

    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &Call> {
        self.recent.iter()
    }

    /// Streams whose key names an fd (plain) or an SSL object on that fd.
    pub fn keys_on_fd(&self, fd: u32, ssl_fds: &FastMap<u64, u32>) -> Vec<StreamKey> {
        self.streams
            .keys()
            .copied()
            .filter(|key| match key {
                StreamKey::Fd(f) => *f == fd,
                StreamKey::Ssl(ssl) => ssl_fds.get(ssl) == Some(&fd),
            })
            .collect()
    }
}

/// A short first write with no line end that starts like an HTTP method.
fn looks_like_split_line(bytes: &[u8]) -> bool {
    const METHODS: [&[u8]; 7] = [
        b"GET ",
        b"PUT ",
        b"POST ",
        b"PATCH ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
    ];
    bytes.len() < MAX_SPLIT_LINE
        && !bytes.is_empty()
        && !bytes.contains(&b'\n')
        && METHODS
            .iter()
            .any(|m| m.starts_with(&bytes[..bytes.len().min(m.len())]) || bytes.starts_with(m))
}

#[cfg(test)]
mod tests;
