//! A call in flight, unanswered: live in the daemon's view and aging, and
//! the resources a process creates while it waits carry the call.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{daemon::Daemon, require_root};

#[test]
fn an_unanswered_call_is_live_and_resources_born_during_it_carry_it() {
    let test = "calls-attribution";
    if !require_root(test) {
        return;
    }
    let (daemon, mut workload, _) = tests::watched_workload(test, "lm-attrib", &["serve"]);
    // The server: answers one request when the test says so.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let (go, answer_now) = std::sync::mpsc::channel::<()>();
    let answer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = server.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request).unwrap();
        answer_now.recv().unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\nX-Openstack-Request-Id: req-attrib\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        conn
    });
    const NODE: &str = "0b6a3c1e-5d8f-4a2b-9c7d-1e2f3a4b5c6d";
    workload.send(&format!("http-call {addr} /v1/nodes/{NODE}"));

    // Unanswered, the call is in flight on the workload's thread, and ages.
    let in_flight = |daemon: &Daemon| {
        daemon.request(json!({"request": "calls", "pid": workload.pid}))["in_flight"]
            .as_array()
            .unwrap()
            .clone()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let [call] = in_flight(&daemon).as_slice() {
            break call.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the call never showed in flight"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (&first["tid"], &first["kind"]),
        (&json!(workload.pid), &json!("node_get"))
    );
    let age = |call: &Value| call["age_s"].as_f64().expect("an in-flight call has an age");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while age(&in_flight(&daemon)[0]) <= age(&first) {
        assert!(std::time::Instant::now() < deadline, "the age does not grow");
        std::thread::sleep(Duration::from_millis(20));
    }
    go.send(()).unwrap();
    let called = workload.expect("called");
    let _conn = answer.join().unwrap();
    daemon.sync();
    let calls = daemon.request(json!({"request": "calls", "pid": workload.pid}));
    assert!(calls["in_flight"].as_array().unwrap().is_empty());
    let call = &calls["recent"][0];
    assert_eq!(
        (&call["kind"], &call["node"], &call["status"], &call["request_id"]),
        (
            &json!("node_get"),
            &json!(NODE),
            &json!(200),
            &json!("req-attrib")
        ),
        "{calls:#}"
    );
    let expected =
        json!({"id": call["id"], "kind": "node_get", "pattern": "GET /v1/nodes/{node}", "node": NODE});

    let ledger = daemon.ledger(workload.pid);
    let fd_birth_call = |fd: &Value| {
        ledger["fds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["fd"] == *fd)
            .unwrap_or_else(|| panic!("fd {fd} not in {:#}", ledger["fds"]))["birth"]["call"]
            .clone()
    };
    assert_eq!(fd_birth_call(&called["file"]), expected);
    assert_eq!(fd_birth_call(&called["socket"]), expected);
    assert_eq!(
        fd_birth_call(&called["after"]),
        Value::Null,
        "born after the answer"
    );
    assert_eq!(
        fd_birth_call(&called["connection"]),
        Value::Null,
        "born before the request"
    );
    let thread = ledger["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == called["thread"])
        .expect("the thread born during the call");
    assert_eq!(thread["birth_call"], expected);
    let connection = ledger["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["fds"].as_array().unwrap().contains(&called["connection"]))
        .expect("the call's connection");
    assert_eq!(
        (&connection["first_call"], &connection["last_call"]),
        (&expected, &expected)
    );

    // The snapshot carries the same, in JSON and in its tables.
    let snapshot = tests::snapshot_json(workload.pid, &daemon.socket);
    let snap_thread = snapshot["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == called["thread"])
        .unwrap();
    assert_eq!(snap_thread["birth_call"], expected);
    let text = tests::leakmon(
        &["snapshot", "--pid", &workload.pid.to_string()],
        Some(&daemon.socket),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("during GET /v1/nodes/{node}"), "{text}");
    assert!(text.contains(", last call GET /v1/nodes/{node}"), "{text}");
}
