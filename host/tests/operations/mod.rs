//! What an operator sees (issue 19): `/metrics` after known traffic.

use std::time::Duration;

use crate::common::{client, fixture, Server};

/// The `/metrics` address the server logged.
fn metrics_url(server: &Server) -> String {
    assert!(server.wait_for_log("serving metrics on ", Duration::from_secs(30)), "{}", server.log());
    let log = server.log();
    let rest = log.split("serving metrics on ").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn r19_metrics_count_known_traffic_exactly_per_app() {
    // https://github.com/wsgi-wasm/wsgi-wasm/issues/19
    let server = Server::start(
        fixture(),
        &["--metrics", "127.0.0.1:0", "--timeout", "2", "--memory", "64", "--max-body-bytes", "1000"],
    );
    let url = metrics_url(&server);
    let c = client();
    // Two that succeed, one timeout, one memory bomb, one 404, one body
    // over --max-body-bytes.
    for path in ["/list", "/list"] {
        assert_eq!(c.get(server.url(path)).send().unwrap().status(), 200);
    }
    assert_eq!(c.get(server.url("/sleep?s=30")).send().unwrap().status(), 504);
    assert_eq!(c.get(server.url("/alloc-forever")).send().unwrap().status(), 500);
    assert_eq!(c.get(server.url("/nope")).send().unwrap().status(), 404);
    assert_eq!(c.post(server.url("/echo")).body(vec![b'x'; 2000]).send().unwrap().status(), 413);
    // The access line (and the counters with it) is written once each
    // request is over: wait for the last one's.
    assert!(server.wait_for_log("\"GET /nope\" 404", Duration::from_secs(10)), "{}", server.log());
    let resp = c.get(&url).send().unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = resp.text().unwrap();
    let digest = server.log().split("digest=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    for line in [
        "wsgi_wasm_requests_total{app=\"fixture\",code=\"200\"} 2".to_owned(),
        "wsgi_wasm_requests_total{app=\"fixture\",code=\"504\"} 1".into(),
        "wsgi_wasm_requests_total{app=\"fixture\",code=\"500\"} 1".into(),
        "wsgi_wasm_requests_total{app=\"fixture\",code=\"404\"} 1".into(),
        "wsgi_wasm_requests_total{app=\"fixture\",code=\"413\"} 1".into(),
        "wsgi_wasm_limit_exceeded_total{app=\"fixture\",limit=\"timeout\"} 1".into(),
        "wsgi_wasm_limit_exceeded_total{app=\"fixture\",limit=\"memory\"} 1".into(),
        "wsgi_wasm_limit_exceeded_total{app=\"fixture\",limit=\"body\"} 1".into(),
        "wsgi_wasm_request_duration_seconds_count{app=\"fixture\"} 6".into(),
        "wsgi_wasm_instances_active{app=\"fixture\"} 0".into(),
        "wsgi_wasm_queue_depth{app=\"fixture\"} 0".into(),
        format!("wsgi_wasm_app_info{{app=\"fixture\",digest=\"{digest}\"}} 1"),
    ] {
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    // Five requests reached a sandbox; the 413 did not. The timeout's
    // instance was dropped before its memory could be counted.
    assert!(text.contains("wsgi_wasm_instantiate_duration_seconds_count{app=\"fixture\"} 5"), "{text}");
    assert!(text.contains("wsgi_wasm_request_memory_bytes_count{app=\"fixture\"} 4"), "{text}");
    assert!(!text.contains("guest_errors_total{app=\"fixture\",kind=\"exception\"}"), "{text}");
    // A crash and an exception, by kind.
    assert_eq!(c.get(server.url("/raise-before")).send().unwrap().status(), 500);
    assert_eq!(c.get(server.url("/exit")).send().unwrap().status(), 500);
    assert!(server.wait_for_log("\"GET /exit\" 500", Duration::from_secs(10)));
    let text = c.get(&url).send().unwrap().text().unwrap();
    assert!(text.contains("wsgi_wasm_guest_errors_total{app=\"fixture\",kind=\"exception\"} 1"), "{text}");
    assert!(text.contains("wsgi_wasm_guest_errors_total{app=\"fixture\",kind=\"exit\"} 1"), "{text}");
    // The metrics listener is its own: the app's port has no /metrics.
    assert_eq!(c.get(server.url("/metrics")).send().unwrap().status(), 404);
    assert!(text.contains("wsgi_wasm_connections_active{protocol=\"http\"}"), "{text}");
}

#[test]
fn r19_json_log_lines_parse_and_name_the_request_app_and_status() {
    // https://github.com/wsgi-wasm/wsgi-wasm/issues/19
    let mut server = Server::start(fixture(), &["--log-format", "json", "--memory", "64"]);
    let c = client();
    assert_eq!(c.get(server.url("/list")).send().unwrap().status(), 200);
    assert_eq!(c.post(server.url("/echo")).body("twelve bytes").send().unwrap().status(), 200);
    assert_eq!(c.get(server.url("/alloc-forever")).send().unwrap().status(), 500);
    let log = server.stop();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect();
    let access: Vec<_> = lines.iter().filter(|l| l["target"] == "wsgi_wasm::access").collect();
    assert_eq!(access.len(), 3, "{log}");
    let mut ids: Vec<u64> = access.iter().map(|l| l["req_id"].as_u64().expect("req_id")).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each request has its own id: {log}");
    for (line, status) in access.iter().zip([200, 200, 500]) {
        assert_eq!(line["app"], "fixture", "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert!(line["message"].as_str().unwrap().contains(&format!("\" {status} ")), "{line}");
    }
    // A request that ran to the end reports its peak linear memory.
    assert!(access[0]["peak_memory"].as_u64().unwrap() > 1 << 20, "{}", access[0]);
    assert_eq!(access[1]["bytes_in"], 12, "{}", access[1]);
    assert_eq!(access[1]["bytes_out"], 12, "{}", access[1]);
    // The memory bomb's error line names the same request as its access line.
    let error = lines.iter().find(|l| l["level"] == "ERROR").expect("an error line");
    assert_eq!(error["req_id"], access[2]["req_id"], "{log}");
}
