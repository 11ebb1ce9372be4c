//! The call log on synthetic byte streams.

use super::{loops::LoopKind, *};
use crate::http::FAKE_TOKEN;

const NODE: &str = "1ea5a24b-6b22-4891-834f-e44fa7929a51";
const INSTANCE: &str = "e17e0e2f-1627-42a2-8a99-c5040f62bdd4";
const S: u64 = 1_000_000_000;

fn origin(tid: u32, ts_ns: u64) -> Origin {
    Origin {
        tid,
        fd: Some(7),
        inode: 99,
        tls: false,
        endpoint: Some("127.0.0.1:6385".parse().unwrap()),
        ts_ns,
    }
}

fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    format!("{method} {path} HTTP/1.1\r\nHost: ironic\r\nX-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential\r\n{length}\r\n{body}")
        .into_bytes()
}

fn response(status: u16) -> Vec<u8> {
    format!("HTTP/1.1 {status} X\r\nX-Openstack-Request-Id: req-{status}\r\nContent-Length: 2\r\n\r\n{{}}")
        .into_bytes()
}

#[test]
fn requests_and_responses_pair_in_order_per_stream() {
    let mut log = CallLog::default();
    let plain = StreamKey::Fd(7);
    let tls = StreamKey::Ssl(0xabc);
    let first = log.written(
        plain,
        &request("GET", "/v1/nodes?fields=uuid", ""),
        false,
        origin(10, S),
    );
    let other = log.written(
        tls,
        &request("GET", &format!("/v1/nodes/{NODE}"), ""),
        false,
        origin(11, S),
    );
    assert_eq!(log.in_flight_on(10, S), Some(first[0]));
    assert!(log.in_flight_on(10, S - 1).is_none(), "not started yet then");
    log.read(tls, &response(404), 2 * S);
    log.read(plain, &response(200), 3 * S);
    let done: Vec<&Call> = log.recent().collect();
    assert_eq!(done.len(), 2);
    assert_eq!(
        (done[0].id, done[0].response.as_ref().unwrap().status),
        (other[0].id, 404)
    );
    assert_eq!(done[1].kind, CallKind::NodeList);
    assert_eq!(
        done[1].response.as_ref().unwrap().headers.request_id.as_deref(),
        Some("req-200")
    );
    assert_eq!(done[1].finished_ns, Some(3 * S));
    assert!(log.in_flight_on(10, 3 * S).is_none());
    // A creation applied after the call finished, born while it was in flight.
    assert_eq!(log.in_flight_on(10, 2 * S), Some(first[0]));
    assert_eq!(log.in_flight_on(11, S + 1), Some(other[0]));
    assert!(log.in_flight_on(11, 2 * S).is_none());
    assert_eq!(log.stats[&(CallKind::NodeList, 200)].count, 1);
    // The token was seen as a token, and its value kept nowhere.
    assert!(done.iter().all(|c| c.request.token));
    let kept = format!("{done:?} {:?} {:?}", log.stats, log.plaintext_tokens);
    assert!(!kept.contains(FAKE_TOKEN), "the token value was kept: {kept}");
}

#[test]
fn pipelined_requests_get_answers_in_order() {
    let mut log = CallLog::default();
    let key = StreamKey::Fd(7);
    let mut both = request("GET", "/", "");
    both.extend(request("GET", "/v1/", ""));
    assert_eq!(log.written(key, &both, false, origin(1, S)).len(), 2);
    log.read(key, &response(200), 2 * S);
    log.read(key, &response(300), 3 * S);
    let statuses: Vec<u16> = log
        .recent()
        .map(|c| c.response.as_ref().unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 300]);
    log.read(key, &response(200), 4 * S);
    assert_eq!(log.parse.unmatched_responses, 1);
}

/// The answer to the first call was never seen (its record lost): the
/// second request on the connection ends it, and the next answer is the
/// second call's, not the first's.
#[test]
fn a_request_after_an_unseen_answer_ends_the_call_before_it() {
    let mut log = CallLog::default();
    let key = StreamKey::Fd(7);
    let first = log.written(key, &request("GET", "/", ""), false, origin(1, S))[0];
    let second = log.written(key, &request("GET", "/v1/", ""), false, origin(1, 2 * S))[0];
    log.read(key, &response(404), 3 * S);
    let ended = log.find(first.id).unwrap();
    assert_eq!(
        (ended.end, ended.finished_ns),
        (Some(CallEnd::AnswerUnseen), Some(2 * S))
    );
    assert!(ended.response.is_none());
    let answered = log.find(second.id).unwrap();
    assert_eq!(answered.response.as_ref().unwrap().status, 404);
    assert_eq!(log.in_flight().count(), 0);
    assert_eq!(log.parse.answers_unseen, 1);
}

#[test]
fn a_target_in_a_separate_body_write_is_found() {
    let mut log = CallLog::default();
    let key = StreamKey::Fd(7);
    let head = format!("PUT /v1/nodes/{NODE}/states/provision HTTP/1.1\r\nContent-Length: 40\r\n\r\n");
    let call = log.written(key, head.as_bytes(), false, origin(1, S))[0];
    log.written(
        key,
        br#"{"target": "active", "configdrive": "x"}"#,
        true,
        origin(1, S),
    );
    assert_eq!(log.find(call.id).unwrap().target, Some("active"));
    assert_eq!(call.kind, CallKind::ProvisionState);
}

#[test]
fn a_request_line_split_over_writes_is_joined() {
    let mut log = CallLog::default();
    let key = StreamKey::Fd(7);
    assert!(log.written(key, b"GET /v1/no", false, origin(1, S)).is_empty());
    let calls = log.written(key, b"des HTTP/1.1\r\nHost: x\r\n\r\n", true, origin(1, S));
    assert_eq!(calls.len(), 1);
    assert_eq!(log.find(calls[0].id).unwrap().request.path, "/v1/nodes");
}

#[test]
fn a_closed_stream_ends_its_calls_and_garbage_is_counted() {
    let mut log = CallLog::default();
    let key = StreamKey::Fd(7);
    log.written(key, &request("GET", "/", ""), false, origin(1, S));
    log.closed(key, 5 * S);
    let call = log.recent().next().unwrap();
    assert_eq!(call.end, Some(CallEnd::ConnectionClosed));
    assert_eq!(log.stats[&(CallKind::VersionDiscovery, 0)].count, 1);
    log.written(key, b"\x16\x03\x01\x00\x05hello", false, origin(1, S));
    log.read(key, b"\x17\x03\x03garbage", 6 * S);
    assert_eq!(log.parse.not_http, 2);
}

#[test]
fn a_state_change_then_steady_lookups_make_a_loop() {
    let mut log = CallLog::default();
    let main = StreamKey::Fd(7);
    let poller = StreamKey::Fd(8);
    let put = log.written(
        main,
        &request(
            "PUT",
            &format!("/v1/nodes/{NODE}/states/provision"),
            r#"{"target": "deleted"}"#,
        ),
        false,
        origin(1, S),
    )[0];
    log.read(main, &response(202), S + 10);
    for i in 0..5 {
        let ts = 2 * S + i * 2 * S;
        log.written(
            poller,
            &request(
                "GET",
                &format!("/v1/nodes?fields=uuid&instance_uuid={INSTANCE}"),
                "",
            ),
            false,
            origin(2, ts),
        );
        log.read(poller, &response(200), ts + 1000);
    }
    let running = &log.loops.active[&(2, INSTANCE.to_string())];
    assert_eq!(
        (running.kind, running.polls, running.trigger),
        (LoopKind::Unprovision, 5, put.id)
    );
    assert_eq!(running.node.as_deref(), Some(NODE));
    assert_eq!(running.interval_ns(), Some(2 * S));
    log.loops.settle(10 * S + 5 * S);
    assert_eq!(log.loops.active.len(), 1, "still within three intervals and 10 s");
    log.loops.settle(10 * S + 11 * S);
    assert_eq!(log.loops.done.len(), 1);
}

#[test]
fn lookups_without_a_state_change_are_no_loop() {
    let mut log = CallLog::default();
    for i in 0..3 {
        log.written(
            StreamKey::Fd(8),
            &request("GET", &format!("/v1/nodes/{NODE}"), ""),
            false,
            origin(2, i * S),
        );
    }
    assert!(log.loops.active.is_empty());
}

/// One GET on `stream` from `tid` at `ts`, answered 1 µs later.
fn lookup(log: &mut CallLog, stream: StreamKey, tid: u32, path: &str, ts: u64) {
    log.written(stream, &request("GET", path, ""), false, origin(tid, ts));
    log.read(stream, &response(200), ts + 1000);
}

#[test]
fn the_loop_is_the_polling_threads_not_the_fetch_after_the_put() {
    let mut log = CallLog::default();
    let (main, poller) = (StreamKey::Fd(7), StreamKey::Fd(8));
    let node_path = format!("/v1/nodes/{NODE}");
    log.written(
        main,
        &request(
            "PUT",
            &format!("{node_path}/states/power"),
            r#"{"target": "power off"}"#,
        ),
        false,
        origin(1, S),
    );
    log.read(main, &response(202), S + 10);
    // openstacksdk fetches the node once on the same thread, then the wait
    // loop's thread polls every second.
    lookup(&mut log, main, 1, &node_path, S + 20_000_000);
    for i in 0..4 {
        lookup(&mut log, poller, 2, &node_path, S + 30_000_000 + i * S);
    }
    assert_eq!(log.loops.active.len(), 1, "{:?}", log.loops.active);
    let running = &log.loops.active[&(2, NODE.to_string())];
    assert_eq!((running.kind, running.polls), (LoopKind::Power, 4));
    assert_eq!(running.interval_ns(), Some(S));
}

#[test]
fn concurrent_loops_claim_the_state_change_of_their_node() {
    const OTHER: &str = "2fb5a24b-6b22-4891-834f-e44fa7929a52";
    let mut log = CallLog::default();
    for (i, (node, target)) in [(NODE, "power off"), (OTHER, "reboot")].iter().enumerate() {
        let stream = StreamKey::Fd(10 + i as u32);
        log.written(
            stream,
            &request(
                "PUT",
                &format!("/v1/nodes/{node}/states/power"),
                &format!(r#"{{"target": "{target}"}}"#),
            ),
            false,
            origin(1, S + i as u64),
        );
        log.read(stream, &response(202), S + 10 + i as u64);
    }
    for i in 0..3 {
        lookup(
            &mut log,
            StreamKey::Fd(20),
            3,
            &format!("/v1/nodes/{NODE}"),
            2 * S + i * S,
        );
    }
    let running = &log.loops.active[&(3, NODE.to_string())];
    assert_eq!(running.node.as_deref(), Some(NODE));
    assert_eq!(
        running.trigger, 1,
        "the first PUT, on NODE, not the newer one on OTHER"
    );
}

#[test]
fn the_in_flight_list_is_bounded_and_says_what_it_dropped() {
    let mut log = CallLog::default();
    // A call waiting on each of as many connections.
    for i in 0..(MAX_IN_FLIGHT as u64 + 5) {
        log.written(
            StreamKey::Fd(i as u32),
            &request("GET", &format!("/v1/nodes/{NODE}"), ""),
            false,
            origin(1, i),
        );
    }
    assert_eq!(log.in_flight().count(), MAX_IN_FLIGHT);
    assert_eq!(log.parse.in_flight_dropped, 5);
    let dropped: Vec<&Call> = log.recent().collect();
    assert_eq!(
        (dropped.len(), dropped[0].id, dropped[0].end),
        (5, 1, Some(CallEnd::Dropped))
    );
    // An answer to a dropped call matches nothing; the others still wait.
    log.read(StreamKey::Fd(0), &response(200), 10_000);
    assert_eq!(log.parse.unmatched_responses, 1);
    log.read(StreamKey::Fd(5), &response(200), 10_000);
    assert_eq!(log.recent().last().unwrap().id, 6);
}
