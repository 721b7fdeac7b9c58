//! A private Kafka-protocol broker for a test: `tansu` (Apache-2.0, tansu-io/tansu, version
//! 0.6.0 built with its SQLite storage: `cargo install tansu --version 0.6.0 --locked
//! --features libsql`, which scripts/test does when it is missing). Apache Kafka itself cannot
//! be fetched on this machine; tansu speaks the Kafka wire protocol (produce, fetch, consumer
//! groups, offset commits) and keeps topics, messages and committed offsets in a SQLite file
//! in the engine's directory, so they survive [`Engine::restart`] even after a SIGKILL.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{tcp_accepts, Engine, EngineSpec};

/// The tansu binary: `SSEGATE_TANSU`, else `tansu` on the PATH, else cargo's bin folder.
pub fn program() -> PathBuf {
    if let Some(p) = std::env::var_os("SSEGATE_TANSU") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
        home.join("bin/tansu")
    })
}

/// How to run tansu on `{port}` (loopback), storing in `tansu.db` in its directory, with `extra`
/// arguments (`--cert`, `--key` for TLS).
pub fn spec(extra: &[&str]) -> EngineSpec {
    let mut args: Vec<String> = [
        "broker",
        "--listener-url",
        "tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        "tcp://127.0.0.1:{port}",
        "--storage-engine",
        // Relative to the working directory, which is the engine's directory.
        "sqlite://tansu.db",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    EngineSpec {
        name: "tansu",
        program: program(),
        args,
        ready: tcp_accepts,
    }
}

/// Starts tansu on a free port.
pub fn start() -> Engine {
    Engine::start(spec(&[]))
}

/// `127.0.0.1:<port>`, as `brokers`.
pub fn brokers(engine: &Engine) -> String {
    format!("127.0.0.1:{}", engine.port())
}

/// Creates `topic` with `partitions` through the Kafka admin API (CreateTopics).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("CreateTopics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// A producer speaking the Kafka protocol to the broker (librdkafka): acks from the
/// leader, idempotence off (tansu has no idempotent producer ids to hand out).
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Produces `value` to `topic`/`partition` with `key` and `headers`; returns its offset.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: &[u8],
    headers: &[(&str, &str)],
) -> i64 {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(value)
        .headers(h);
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(delivery) => delivery.offset,
        Err((e, _)) => panic!("produce to {topic}/{partition}: {e}"),
    }
}

/// TLS in front of a broker, since tansu 0.6.0 cannot be started with TLS from its command
/// line (its `--cert` and `--key` are declared mutually exclusive): a TLS terminator on a
/// free loopback port, with ssegate's own server TLS (rustls) and the certificate `cert` /
/// `key`, piping each connection to `upstream`. Start the broker advertising this port (see
/// [`spec_advertising`]) so that clients come back through it after the metadata request.
/// Runs until the test's runtime ends.
pub async fn tls_terminator(
    cert: &std::path::Path,
    key: &std::path::Path,
    port: u16,
    upstream: u16,
) -> tokio::task::JoinHandle<()> {
    let acceptor = ssegate::http::tls::Tls::load(cert, key)
        .expect("test certificate")
        .acceptor();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the TLS port");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // a client that does not trust the certificate
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    })
}

/// [`spec`], but advertising `advertised` (a port in front of the broker) to clients.
pub fn spec_advertising(advertised: u16) -> EngineSpec {
    let mut s = spec(&[]);
    let url = format!("tcp://127.0.0.1:{advertised}");
    s.args[4] = url;
    s
}

/// tansu that requires SASL (SCRAM) once a file `authenticate` exists in its directory. An
/// authenticating tansu 0.6.0 lets nobody in to create the first user, so users are created
/// (over the Kafka protocol, [`create_user`]) while it does not authenticate yet; then the
/// test writes the file and [`Engine::restart`] brings it back with `--authentication` on
/// the same storage.
pub fn spec_authenticating_when_marked() -> EngineSpec {
    let base = spec(&[]);
    let quoted: Vec<String> = base.args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "if [ -e authenticate ]; then set -- --authentication; fi; exec '{}' {} \"$@\"",
        base.program.display(),
        quoted.join(" ")
    );
    EngineSpec {
        name: "tansu",
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script],
        ready: tcp_accepts,
    }
}

/// Creates SCRAM-SHA-512 user `name` with `password` (tansu's own client, over the Kafka
/// protocol: AlterUserScramCredentials).
pub fn create_user(brokers: &str, name: &str, password: &str) {
    let out = std::process::Command::new(program())
        .args(["user", "create", "--mechanism", "scram512", "--broker"])
        .arg(format!("tcp://{brokers}"))
        .args([name, password])
        .output()
        .expect("run tansu user create");
    assert!(
        out.status.success(),
        "tansu user create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
