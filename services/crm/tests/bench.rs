//! `crm bench` end to end: the load generator starts interaction (and the
//! identification it follows) in process over a temporary SQLite store,
//! measures the ceiling and RecordInteraction, and reports every figure.
//! A test of correctness only: no figure is compared with a threshold
//! other than "was measured".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn bench(args: &[&str]) -> (std::process::Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_crm"))
        .arg("bench")
        .args(args)
        .env("CRM_LOG_FORMAT", "json")
        .output()
        .expect("run crm bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

#[test]
fn record_interaction_reports_every_figure_with_no_errors() {
    let (output, stdout) =
        bench(&["record-interaction", "--in-process", "sqlite", "--requests", "200", "--concurrency", "4", "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "crm bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");

    // The text report.
    for field in ["ceiling", "workflow", "throughput", "p50", "p99", "p99.9", "errors 0", "ratio"] {
        assert!(stdout.contains(field), "no {field:?} in the report:\n{stdout}");
    }
    assert!(stdout.contains("grpc.health.v1.Health/Check"), "{stdout}");
    assert!(stdout.contains("RecordInteraction"), "{stdout}");

    // The JSON line, last.
    let line = stdout.lines().last().expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(line).expect("the last line is JSON");
    assert_eq!(report["bench"], "record-interaction");
    assert_eq!(report["kind"], "in-process sqlite");
    let workflow = &report["workflow"];
    assert_eq!(workflow["requests"], 200);
    assert_eq!(workflow["concurrency"], 4);
    assert_eq!(workflow["ok"], 200);
    assert_eq!(workflow["errors"], 0);
    assert!(workflow["throughput"].as_f64().unwrap() > 0.0, "{line}");
    for q in ["p50_us", "p99_us", "p999_us"] {
        assert!(workflow[q].as_f64().unwrap() > 0.0, "{q} in {line}");
    }
    assert!(workflow["p50_us"].as_f64().unwrap() <= workflow["p99_us"].as_f64().unwrap());
    assert!(workflow["p99_us"].as_f64().unwrap() <= workflow["p999_us"].as_f64().unwrap());
    let ceiling = &report["ceiling"];
    assert_eq!(ceiling["rpc"], "grpc.health.v1.Health/Check");
    assert_eq!(ceiling["errors"], 0);
    assert!(ceiling["throughput"].as_f64().unwrap() > 0.0, "{line}");
    let ratio = &report["ratio"];
    assert!(ratio["throughput"].as_f64().unwrap() > 0.0, "{line}");
    assert!(ratio["p99"].as_f64().unwrap() > 0.0, "{line}");
}

#[test]
fn feed_replay_fills_the_feed_and_reads_it_back_in_order() {
    let (output, stdout) =
        bench(&["feed-replay", "--in-process", "sqlite", "--events", "300", "--ceiling-requests", "100", "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "crm bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let line = stdout.lines().last().expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(line).expect("the last line is JSON");
    assert_eq!(report["bench"], "feed-replay");
    // One event was written to learn the head, the rest to fill the feed.
    assert_eq!(report["fill"]["requests"], 299);
    assert_eq!(report["fill"]["errors"], 0);
    assert_eq!(report["replays"][0]["events"], 300);
    assert!(report["replays"][0]["events_per_s"].as_f64().unwrap() > 0.0, "{line}");
}

#[test]
fn resolve_identity_loads_a_base_trains_and_resolves_returning_customers() {
    let (output, stdout) = bench(&[
        "resolve-identity",
        "--in-process",
        "sqlite",
        "--profiles",
        "400",
        "--import-streams",
        "3",
        "--requests",
        "150",
        "--concurrency",
        "4",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "crm bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for field in ["import", "training", "ResolveIdentity", "errors 0", "ratio"] {
        assert!(stdout.contains(field), "no {field:?} in the report:\n{stdout}");
    }
    let line = stdout.lines().last().expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(line).expect("the last line is JSON");
    assert_eq!(report["bench"], "resolve-identity");
    let import = &report["import"];
    assert_eq!(import["records"], 400);
    assert_eq!(import["streams"], 3);
    let accounted: i64 = ["created", "linked", "review"].iter().map(|k| import[k].as_i64().unwrap()).sum();
    assert_eq!(accounted, 400, "{line}");
    assert_eq!(import["rejected"], 0, "{line}");
    // Generated people are mostly distinct: most records create a profile.
    assert!(import["created"].as_i64().unwrap() > 300, "{line}");
    assert!(report["training"]["matcher_version"].as_i64().unwrap() >= 1, "{line}");
    let workflow = &report["workflow"];
    assert_eq!(workflow["rpc"], "crm.identification.v1.IdentificationService/ResolveIdentity");
    assert_eq!(workflow["ok"], 150);
    assert_eq!(workflow["errors"], 0);
    assert!(workflow["p99_us"].as_f64().unwrap() > 0.0, "{line}");
}

#[test]
fn only_loopback_is_a_target() {
    let (output, _) = bench(&["ceiling", "--addr", "http://192.0.2.1:50054", "--requests", "10"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}
