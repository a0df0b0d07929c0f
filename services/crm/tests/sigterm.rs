//! `crm serve <service>` (the real binary) on SIGTERM: stops taking new
//! connections and reports NOT_SERVING, lets a call in flight finish, ends
//! feed streams cleanly, and exits 0 — at once when nothing is left, and at
//! the latest when the drain timeout (`CRM_DRAIN_TIMEOUT_MS`) runs out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpListener,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crm_proto::identification::v1::{
    Identifier, IdentifierType, ImportProfilesRequest, ImportProfilesResponse, ListProfilesRequest, SubscribeRequest,
    identification_service_client::IdentificationServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// A running `crm serve identification`, killed if the test fails.
struct Server {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start identification (it follows no feed, so it needs no peer) on a
    /// free loopback port and wait until it is SERVING.
    async fn start(drain: Duration) -> Server {
        let data = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_crm"))
            .args(["serve", "identification"])
            .env("CRM_HOST", "127.0.0.1")
            .env("CRM_PORT", port.to_string())
            .env("CRM_DATA_DIR", data.path())
            .env_remove("CRM_DATABASE_URL")
            .env("CRM_DRAIN_TIMEOUT_MS", drain.as_millis().to_string())
            // Longer than any wait below: only the drain may cut a call.
            .env("CRM_REQUEST_TIMEOUT_MS", "120000")
            .env("CRM_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { child, port, _data: data };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.health().await != Some(ServingStatus::Serving) {
            assert!(Instant::now() < deadline, "never became SERVING");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// A channel on its own connection.
    async fn connect(&self) -> Channel {
        Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port)).unwrap().connect().await.unwrap()
    }

    /// Its overall health over a new connection; None if it does not answer.
    async fn health(&self) -> Option<ServingStatus> {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port)).ok()?.connect().await.ok()?;
        let r = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.ok()?;
        ServingStatus::try_from(r.into_inner().status).ok()
    }

    fn sigterm(&self) -> Instant {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        Instant::now()
    }

    /// Wait for the process to exit, at most `limit`.
    async fn exit_within(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(start.elapsed() < limit, "still running {limit:?} after the call finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn record(n: usize) -> ImportProfilesRequest {
    ImportProfilesRequest {
        identifiers: vec![Identifier {
            r#type: IdentifierType::Email as i32,
            value: format!("cliente.{n}@correo.es"),
            namespace: String::new(),
        }],
        ..Default::default()
    }
}

/// An ImportProfiles call (client streaming) whose records the test sends
/// one by one: it stays in flight until the sender is dropped.
fn start_import(
    channel: Channel,
) -> (mpsc::Sender<ImportProfilesRequest>, tokio::task::JoinHandle<Result<ImportProfilesResponse, tonic::Status>>) {
    let (tx, rx) = mpsc::channel(8);
    let call = tokio::spawn(async move {
        IdentificationServiceClient::new(channel).import_profiles(ReceiverStream::new(rx)).await.map(|r| r.into_inner())
    });
    (tx, call)
}

/// Wait until the server has stored `n` profiles (so the import is being
/// served, not just sent).
async fn wait_profiles(server: &Server, n: usize) {
    let mut client = IdentificationServiceClient::new(server.connect().await);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = client
            .list_profiles(ListProfilesRequest { page_size: 100, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .profiles
            .len();
        if listed >= n {
            return;
        }
        assert!(Instant::now() < deadline, "the import never reached the store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until a new connection no longer finds it SERVING.
async fn wait_not_serving(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.health().await == Some(ServingStatus::Serving) {
        assert!(Instant::now() < deadline, "still SERVING after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_call_in_flight_finish_then_exits_cleanly() {
    let drain = Duration::from_secs(15);
    let mut server = Server::start(drain).await;

    // A call in flight: an import with its first record applied.
    let (records, import) = start_import(server.connect().await);
    records.send(record(1)).await.unwrap();
    wait_profiles(&server, 1).await;
    // And a feed subscriber, tailing live.
    let mut feed = IdentificationServiceClient::new(server.connect().await)
        .subscribe(SubscribeRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(feed.message().await.unwrap().is_some(), "the feed replays the first import");

    let terminated = server.sigterm();
    wait_not_serving(&server).await;

    // The feed ends cleanly (its follower reconnects to another replica),
    // not with an error.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match feed.message().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the feed stream ends on shutdown");
    assert!(ended.is_ok(), "feed ended with {ended:?}");

    // The import goes on after SIGTERM and completes.
    records.send(record(2)).await.unwrap();
    records.send(record(3)).await.unwrap();
    drop(records);
    let counts = import.await.unwrap().expect("the call in flight completes OK");
    assert_eq!(counts.created_count, 3, "{counts:?}");

    let (status, _) = server.exit_within(drain).await;
    assert!(status.success(), "clean exit, got {status}");
    assert!(terminated.elapsed() < drain, "exited within the drain timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_outlives_the_drain_timeout_is_cut_and_the_process_still_exits_cleanly() {
    let drain = Duration::from_millis(1500);
    let mut server = Server::start(drain).await;
    let (records, import) = start_import(server.connect().await);
    records.send(record(1)).await.unwrap();
    wait_profiles(&server, 1).await;

    let terminated = server.sigterm();
    // The import never ends by itself; the drain timeout ends the process.
    let (status, _) = server.exit_within(drain + Duration::from_secs(10)).await;
    let took = terminated.elapsed();
    assert!(status.success(), "clean exit, got {status}");
    assert!(took >= drain, "waited for the call for the drain timeout (took {took:?})");
    assert!(import.await.unwrap().is_err(), "the cut call fails rather than hanging");
    drop(records);
}
