//! Publishers: requests in each target's format, paced at the plan's rate (or as fast as
//! acknowledged) over keep-alive connections, with acknowledgement times.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ssegate_loadgen::now_us;
use ssegate_loadgen::wire::{self, HttpClient, Url};

use crate::cli::{RunArgs, Target, MERCURE_TOPIC_BASE};
use crate::plan::Plan;
use crate::stats::{self, new_hist, record, Pct, Report};
use crate::subscriber::Shared;

/// A publish request for the events (channel, seq) with timestamp `t`.
pub fn publish_request(
    plan: &Plan,
    token: Option<&str>,
    events: &[(String, u64)],
    t: u64,
) -> Vec<u8> {
    match plan.target {
        Target::SsegateMercure => {
            let (c, s) = &events[0];
            mercure_request(&plan.publish_url, token, &plan.topic(c), *s, t)
        }
        _ => request_to(plan.target, &plan.publish_url, token, events, t),
    }
}

/// A Mercure update (`POST /.well-known/mercure`, a form): `topic`, `type=b` (the event type
/// the other targets' events have too) and `data` = `{"t":T,"s":S}`. One update per request.
pub fn mercure_request(u: &Url, token: Option<&str>, topic: &str, s: u64, t: u64) -> Vec<u8> {
    let data = format!(r#"{{"t":{t},"s":{s}}}"#);
    let body = format!(
        "topic={}&type=b&data={}",
        wire::form_encode(topic),
        wire::form_encode(&data)
    );
    let mut r = format!(
        "POST {}/.well-known/mercure HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        u.base,
        u.host,
        body.len()
    );
    if let Some(tok) = token {
        r += &format!("Authorization: Bearer {tok}\r\n");
    }
    r += "\r\n";
    r += &body;
    r.into_bytes()
}

/// A publish request in `target`'s format to its publish endpoint at `u` (ssegate-mercure:
/// the first event only, its topic under [`MERCURE_TOPIC_BASE`]).
pub fn request_to(
    target: Target,
    u: &Url,
    token: Option<&str>,
    events: &[(String, u64)],
    t: u64,
) -> Vec<u8> {
    let (path, body) = match target {
        Target::SsegateMercure => {
            let (c, s) = &events[0];
            let topic = format!("{MERCURE_TOPIC_BASE}{c}");
            return mercure_request(u, token, &topic, *s, t);
        }
        Target::Ssegate => {
            let items: Vec<String> = events
                .iter()
                .map(|(c, s)| {
                    format!(r#"{{"channel":"{c}","type":"b","data":{{"t":{t},"s":{s}}}}}"#)
                })
                .collect();
            let body = if items.len() == 1 {
                items.into_iter().next().unwrap_or_default()
            } else {
                format!("[{}]", items.join(","))
            };
            (format!("{}/v1/publish", u.base), body)
        }
        Target::Nchan => {
            let (c, s) = &events[0];
            (
                format!("{}/pub/{c}", u.base),
                format!(r#"{{"t":{t},"s":{s}}}"#),
            )
        }
        Target::Pushpin => {
            let items: Vec<String> = events
                .iter()
                .map(|(c, s)| {
                    let content = format!("event: b\ndata: {{\"t\":{t},\"s\":{s}}}\n\n");
                    let content = serde_json::to_string(&content).unwrap_or_default();
                    format!(
                        r#"{{"channel":"{c}","formats":{{"http-stream":{{"content":{content}}}}}}}"#
                    )
                })
                .collect();
            // The URL's path is the publish endpoint itself.
            let path = if u.base.is_empty() {
                "/publish/".to_owned()
            } else {
                format!("{}/", u.base)
            };
            (path, format!(r#"{{"items":[{}]}}"#, items.join(",")))
        }
    };
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: text/json, application/json\r\nContent-Length: {}\r\n",
        u.host,
        body.len()
    );
    if let Some(t) = token {
        r += &format!("Authorization: Bearer {t}\r\n");
    }
    r += "\r\n";
    r += &body;
    r.into_bytes()
}

/// Publishing state shared by the publisher tasks.
struct PubShared {
    next: AtomicU64,
    requests: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    /// Acknowledged events per channel of this process.
    acked_by_channel: Vec<AtomicU64>,
    ack: Mutex<Histogram<u64>>,
    last_ack: Mutex<Option<Instant>>,
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    plan: Arc<Plan>,
    sh: Arc<Shared>,
    ps: Arc<PubShared>,
    token: Option<Arc<String>>,
    start: Instant,
    deadline: Instant,
    total: Option<u64>,
    src: Ipv4Addr,
) {
    let mut client = HttpClient::new(plan.publish_url.addr, src, Duration::from_secs(30));
    let batch = plan.batch as u64;
    loop {
        let k = ps.next.fetch_add(batch, Relaxed);
        let n = match total {
            Some(total) => {
                if k >= total {
                    break;
                }
                let due = start + Duration::from_secs_f64(k as f64 / plan.rate);
                if due > deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                batch.min(total - k)
            }
            None => {
                if Instant::now() >= deadline {
                    break;
                }
                batch
            }
        };
        let events: Vec<(String, u64)> = (k..k + n)
            .map(|s| (plan.channel(s % plan.channels), s))
            .collect();
        let req = publish_request(
            &plan,
            token.as_deref().map(|s| s.as_str()),
            &events,
            now_us(),
        );
        let sent = Instant::now();
        let res = client.request(&req).await;
        ps.requests.fetch_add(1, Relaxed);
        match res {
            Ok(r) if (200..300).contains(&r.status) => {
                let done = Instant::now();
                record(
                    &mut ps.ack.lock().expect("ack lock"),
                    (done - sent).as_micros() as u64,
                );
                ps.acked.fetch_add(n, Relaxed);
                for s in k..k + n {
                    ps.acked_by_channel[(s % plan.channels) as usize].fetch_add(1, Relaxed);
                }
                let mut last = ps.last_ack.lock().expect("last ack lock");
                if last.is_none_or(|l| l < done) {
                    *last = Some(done);
                }
            }
            Ok(r) => {
                ps.failed.fetch_add(n, Relaxed);
                sh.error(match wire::error_code(&r.body) {
                    Some(code) => format!("publish_http_{}_{code}", r.status),
                    None => format!("publish_http_{}", r.status),
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => {
                ps.failed.fetch_add(n, Relaxed);
                sh.error("publish_io");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Publishes at the plan's rate (or as fast as acknowledged) and returns the events
/// acknowledged per channel of this process.
pub async fn publish(
    plan: &Arc<Plan>,
    sh: &Arc<Shared>,
    pub_token: Option<Arc<String>>,
    args: &RunArgs,
    report: &mut Report,
) -> Vec<u64> {
    let ps = Arc::new(PubShared {
        next: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        acked_by_channel: (0..plan.channels).map(|_| AtomicU64::new(0)).collect(),
        ack: Mutex::new(new_hist()),
        last_ack: Mutex::new(None),
    });
    let start = Instant::now();
    let total = (plan.rate > 0.0).then(|| (plan.rate * plan.duration).round() as u64);
    // Paced publishing may run late when the server is slow, but not forever.
    let deadline = if total.is_some() {
        start + Duration::from_secs_f64(plan.duration * 2.0 + 10.0)
    } else {
        start + Duration::from_secs_f64(plan.duration)
    };
    // Publishers connect from addresses of their own (127.0.200+proc.1+i): a peer that
    // closes every publish connection leaves many sockets in TIME_WAIT.
    let publishers: Vec<_> = (0..plan.publishers.max(1))
        .map(|i| {
            let src = Ipv4Addr::new(
                127,
                0,
                200 + (args.proc_index % 50) as u8,
                1 + (i % 250) as u8,
            );
            tokio::spawn(publisher(
                plan.clone(),
                sh.clone(),
                ps.clone(),
                pub_token.clone(),
                start,
                deadline,
                total,
                src,
            ))
        })
        .collect();
    for p in publishers {
        let _ = p.await;
    }
    let publish_end = ps.last_ack.lock().expect("last ack").unwrap_or(start);
    let publish_s = (publish_end - start).as_secs_f64();
    if let Some(total) = total {
        if ps.next.load(Relaxed) < total {
            report.notes.push(format!(
                "publishing fell behind the target rate: {} of {total} events sent before the deadline",
                ps.next.load(Relaxed)
            ));
        }
    }
    report.publish = stats::PublishStats {
        requests: ps.requests.load(Relaxed),
        events_acked: ps.acked.load(Relaxed),
        events_failed: ps.failed.load(Relaxed),
        batch: plan.batch,
        publishers: plan.publishers.max(1),
        target_rate: plan.rate,
        duration_s: publish_s,
        acked_per_s: if publish_s > 0.0 {
            ps.acked.load(Relaxed) as f64 / publish_s
        } else {
            0.0
        },
        ack_us: Pct::of(&ps.ack.lock().expect("ack")),
    };
    report.histograms.ack = stats::hist_to_vec(&ps.ack.lock().expect("ack"));
    ps.acked_by_channel
        .iter()
        .map(|n| n.load(Relaxed))
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::subscriber::sub_request;

    fn plan(extra: &[&str]) -> Plan {
        let mut argv = vec![
            "ssegate-bench",
            "run",
            "--target",
            "ssegate-mercure",
            "--scenario",
            "fanout",
            "--url",
            "http://127.0.0.1:9/",
            "--jwt-secret",
            "s3cret",
            "--batch",
            "5",
        ];
        argv.extend_from_slice(extra);
        match Cli::parse_from(argv).command {
            Command::Run(a) => Plan::new(&a).unwrap(),
            _ => unreachable!("a run"),
        }
    }

    #[test]
    fn mercure_subscription_and_update_requests() {
        let p = plan(&[]);
        assert_eq!(p.batch, 1, "one update per request");
        let sub = String::from_utf8(sub_request(&p, &p.channel(0), Some("tok"), None)).unwrap();
        assert!(sub.starts_with(
            "GET /.well-known/mercure?match=https%3A%2F%2Fbench.example%2Fbench-fanout-0 HTTP/1.1\r\n"
        ));
        assert!(sub.contains("\r\nAuthorization: Bearer tok\r\n"));
        let p = plan(&[
            "--mercure-matcher",
            "topic",
            "--mercure-topic-base",
            "urn:x:",
        ]);
        let sub = String::from_utf8(sub_request(&p, &p.channel(0), None, None)).unwrap();
        assert!(sub.starts_with("GET /.well-known/mercure?topic=urn%3Ax%3Abench-fanout-0 "));

        let req = publish_request(
            &p,
            Some("ptok"),
            &[(p.channel(0), 7), (p.channel(0), 8)],
            42,
        );
        let req = String::from_utf8(req).unwrap();
        let (head, body) = req.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /.well-known/mercure HTTP/1.1\r\n"));
        assert!(head.contains("\r\nContent-Type: application/x-www-form-urlencoded\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(head.ends_with("\r\nAuthorization: Bearer ptok"));
        assert_eq!(
            body,
            "topic=urn%3Ax%3Abench-fanout-0&type=b&data=%7B%22t%22%3A42%2C%22s%22%3A7%7D"
        );
    }
}
