//! The whole suite as five `crm serve` processes (the real command line,
//! one process per service as containers run it) on free loopback ports,
//! each with its own SQLite store, their output kept in files.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use crm_runtime::config::ServiceKind;
use tonic::transport::{Channel, Endpoint};

/// One `crm serve <service>` process.
pub struct Process {
    /// Which service.
    pub kind: ServiceKind,
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Process {
    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A lazily connected channel to it.
    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url()).unwrap_or_else(|e| panic!("endpoint: {e}")).connect_lazy()
    }
}

/// The five processes, killed if still running when dropped.
pub struct Processes {
    /// By service.
    pub by_kind: BTreeMap<&'static str, Process>,
    _data: tempfile::TempDir,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for p in self.by_kind.values_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).port()
}

impl Processes {
    /// Start the five services by running `binary` (the `crm` command
    /// line) with `env` added to each one's environment (telemetry
    /// variables of the parent are not inherited), and wait until every one
    /// is SERVING.
    pub async fn start(binary: &str, env: &[(&str, &str)]) -> Processes {
        let data = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let ports: BTreeMap<&'static str, u16> = ServiceKind::ALL.iter().map(|k| (k.name(), free_port())).collect();
        let addr = |k: ServiceKind| format!("http://127.0.0.1:{}", ports[k.name()]);
        let mut by_kind = BTreeMap::new();
        for kind in ServiceKind::ALL {
            let out = data.path().join(format!("{}.out", kind.name()));
            let err = data.path().join(format!("{}.err", kind.name()));
            let file = |p: &PathBuf| std::fs::File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let mut command = Command::new(binary);
            command
                .args(["serve", kind.name()])
                .env("CRM_HOST", "127.0.0.1")
                .env("CRM_PORT", ports[kind.name()].to_string())
                .env("CRM_DATA_DIR", data.path().join(kind.name()))
                .env("CRM_IDENTIFICATION_ADDR", addr(ServiceKind::Identification))
                .env("CRM_INTERACTION_ADDR", addr(ServiceKind::Interaction))
                .env("CRM_DIFFERENTIATION_ADDR", addr(ServiceKind::Differentiation))
                .env("CRM_PERSONALIZATION_ADDR", addr(ServiceKind::Personalization))
                .env_remove("CRM_DATABASE_URL")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_SERVICE_NAME")
                .env_remove("OTEL_RESOURCE_ATTRIBUTES")
                .stdin(Stdio::null())
                .stdout(file(&out))
                .stderr(file(&err));
            for (k, v) in env {
                command.env(k, v);
            }
            let child = command.spawn().unwrap_or_else(|e| panic!("spawn crm serve {}: {e}", kind.name()));
            by_kind.insert(kind.name(), Process { kind, port: ports[kind.name()], child, out, err });
        }
        let processes = Processes { by_kind, _data: data };
        for p in processes.by_kind.values() {
            crm_runtime::testing::wait_until_serving(p.channel()).await;
        }
        processes
    }

    /// The process of `kind`.
    pub fn get(&self, kind: ServiceKind) -> &Process {
        &self.by_kind[kind.name()]
    }

    /// SIGTERM every process and wait until all have exited (at most a
    /// minute each); returns how each ended.
    pub async fn terminate(&mut self) -> BTreeMap<&'static str, ExitStatus> {
        for p in self.by_kind.values() {
            let pid = p.child.id().to_string();
            let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap_or_else(|e| panic!("kill: {e}"));
            assert!(sent.success(), "SIGTERM to {}", p.kind.name());
        }
        let mut statuses = BTreeMap::new();
        for (name, p) in self.by_kind.iter_mut() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(s) = p.child.try_wait().unwrap_or_else(|e| panic!("wait: {e}")) {
                    break s;
                }
                assert!(tokio::time::Instant::now() < deadline, "{name} did not exit after SIGTERM");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            statuses.insert(*name, status);
        }
        statuses
    }

    /// Everything each process wrote, stdout and stderr, line by line.
    pub fn output(&self) -> Vec<(&'static str, String)> {
        let mut lines = Vec::new();
        for (name, p) in &self.by_kind {
            for path in [&p.out, &p.err] {
                let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                lines.extend(text.lines().filter(|l| !l.trim().is_empty()).map(|l| (*name, l.to_owned())));
            }
        }
        lines
    }
}
