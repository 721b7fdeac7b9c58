//! Cross-site request forgery, from 127.0.0.2 every 2 s: what a page on another site can make
//! a signed-in browser send. The credentials ride in the `ssegate_token` cookie (a
//! publisher's token, an administrator's token), the body is `text/plain` or a form, and
//! `Origin` (or only `Referer`) names the attacking page. The node must answer
//! `403 cross_site_request` when the origin is not allowed and `415 unsupported_media_type`
//! when an allowed origin sends a body that is not JSON, and change nothing: the publishes
//! aim at `soak:canary` (watched by the canary subscriber; the log head is compared with
//! the publishers' acknowledgements at the end) and the drains would stop the node.
//!
//! The attempts share 127.0.0.2 with the attack connections, so some meet the address's
//! connection cap first (`503 too_many_open_connections_from_address`): those are counted
//! as not judged; every variant must still be refused as expected at least once. Once a
//! cross-site publish has been accepted the protection is known to be missing and the check
//! has failed; the drain attempts are then skipped, since an accepted one would end the run
//! (they are counted as skipped).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ctx::{Ctx, ATTACKER};
use crate::subscriber::CANARY;
use crate::wire::Client;

pub const EVIL: &str = "https://evil.example";

struct Variant {
    name: &'static str,
    path: &'static str,
    admin: bool,
    /// `Origin: …` (`Some`) or only a `Referer` on the evil site (`None`).
    origin: Option<bool>,
    content_type: &'static str,
    body: String,
    expect_status: u16,
    expect_code: &'static str,
}

/// The fate of one variant's attempts.
#[derive(Debug, Default)]
pub struct VariantReport {
    pub name: &'static str,
    pub expected: String,
    pub attempts: u64,
    pub refused_as_expected: u64,
    /// Refused (4xx/5xx) but not with the expected status and code, by `status code`.
    pub refused_otherwise: BTreeMap<String, u64>,
    /// Answered 1xx–3xx: the node did what the forged request asked.
    pub accepted: u64,
    /// Not judged: the connection ended without an answer, or the attacker's address was at
    /// its cap (`503 too_many_open_connections_from_address`, `429 too_many_…`) — the forged
    /// request never reached the checks, and changed nothing.
    pub capped: BTreeMap<String, u64>,
    pub skipped: u64,
}

fn variants(allowed: &str) -> Vec<(Variant, String)> {
    let json = format!(r#"{{"channel":"{CANARY}","type":"csrf","data":{{"x":1}}}}"#);
    // What an HTML form with one field named like the JSON sends.
    let form = format!(
        "%7B%22channel%22%3A%22{}%22%2C%22type%22%3A%22csrf%22%2C%22data%22%3A%7B%22x%22%3A%22=%22%7D%7D",
        CANARY.replace(':', "%3A")
    );
    let text = "text/plain";
    let urlenc = "application/x-www-form-urlencoded";
    let v = |name, path, admin, origin, content_type, body: &str, cross: bool| Variant {
        name,
        path,
        admin,
        origin,
        content_type,
        body: body.to_owned(),
        expect_status: if cross { 403 } else { 415 },
        expect_code: if cross {
            "cross_site_request"
        } else {
            "unsupported_media_type"
        },
    };
    let list = vec![
        v(
            "publish_evil_origin_text",
            "/v1/publish",
            false,
            Some(false),
            text,
            &json,
            true,
        ),
        v(
            "publish_evil_origin_form",
            "/v1/publish",
            false,
            Some(false),
            urlenc,
            &form,
            true,
        ),
        v(
            "publish_evil_referer_text",
            "/v1/publish",
            false,
            None,
            text,
            &json,
            true,
        ),
        v(
            "publish_allowed_origin_text",
            "/v1/publish",
            false,
            Some(true),
            text,
            &json,
            false,
        ),
        v(
            "publish_allowed_origin_form",
            "/v1/publish",
            false,
            Some(true),
            urlenc,
            &form,
            false,
        ),
        v(
            "drain_evil_origin_text",
            "/v1/admin/drain",
            true,
            Some(false),
            text,
            "{}",
            true,
        ),
        v(
            "drain_evil_origin_form",
            "/v1/admin/drain",
            true,
            Some(false),
            urlenc,
            "a=b",
            true,
        ),
        v(
            "drain_allowed_origin_text",
            "/v1/admin/drain",
            true,
            Some(true),
            text,
            "{}",
            false,
        ),
    ];
    list.into_iter()
        .map(|v| {
            let origin = match v.origin {
                Some(true) => allowed.to_owned(),
                _ => EVIL.to_owned(),
            };
            (v, origin)
        })
        .collect()
}

/// Sends every variant every 2 s until `stop`.
pub async fn run_csrf(ctx: Arc<Ctx>, stop: CancellationToken) -> Vec<VariantReport> {
    let list = variants(&ctx.opts.allowed_origin);
    let mut reports: Vec<VariantReport> = list
        .iter()
        .map(|(v, origin)| VariantReport {
            name: v.name,
            expected: format!("{} {} (Origin {origin})", v.expect_status, v.expect_code),
            ..VariantReport::default()
        })
        .collect();
    let publisher = format!(
        "ssegate_token={}",
        ctx.minter.publisher("soak-publisher", 24 * 3600)
    );
    let admin = format!("ssegate_token={}", ctx.minter.admin(24 * 3600));
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return reports,
            _ = tick.tick() => {}
        }
        for (i, (v, origin)) in list.iter().enumerate() {
            if stop.is_cancelled() {
                break;
            }
            let publish_accepted = reports
                .iter()
                .any(|r| r.name.starts_with("publish") && r.accepted > 0);
            let r = &mut reports[i];
            if v.admin && publish_accepted {
                r.skipped += 1;
                continue;
            }
            r.attempts += 1;
            let cookie = if v.admin { &admin } else { &publisher };
            let referer = format!("{EVIL}/page.html");
            let mut headers = vec![
                ("Cookie", cookie.as_str()),
                ("Content-Type", v.content_type),
                ("Connection", "close"),
            ];
            match v.origin {
                Some(_) => headers.push(("Origin", origin.as_str())),
                None => headers.push(("Referer", referer.as_str())),
            }
            let mut client = Client::new(ATTACKER, ctx.target.clone());
            let answer = client
                .request(
                    "POST",
                    v.path,
                    &headers,
                    v.body.as_bytes(),
                    Duration::from_secs(5),
                )
                .await;
            match answer {
                Err(e) => {
                    *r.capped
                        .entry(format!("no answer: {}", e.kind()))
                        .or_default() += 1
                }
                Ok(a) if a.status() < 400 => {
                    r.accepted += 1;
                    if v.admin {
                        ctx.drained_by_csrf.store(true, Ordering::Relaxed);
                    }
                }
                Ok(a) => {
                    let code = a.error_code().unwrap_or_default();
                    if a.status() == v.expect_status && code == v.expect_code {
                        r.refused_as_expected += 1;
                    } else if matches!(a.status(), 429 | 503) && code.starts_with("too_many_") {
                        *r.capped
                            .entry(format!("{} {code}", a.status()))
                            .or_default() += 1;
                    } else {
                        *r.refused_otherwise
                            .entry(format!("{} {code}", a.status()))
                            .or_default() += 1;
                    }
                }
            }
        }
    }
}

/// The `--fault append` debug aid: one event on the canary's channel, published with a
/// bearer token (which the cross-site checks let through), as if a forged publish had been
/// accepted.
pub async fn append_behind_the_ledger(ctx: &Ctx) {
    let auth = format!("Bearer {}", ctx.minter.publisher("soak-publisher", 600));
    let body = format!(r#"{{"channel":"{CANARY}","type":"csrf","data":{{"fault":true}}}}"#);
    let answer = Client::new(crate::ctx::WELL_BEHAVED, ctx.target.clone())
        .request(
            "POST",
            "/v1/publish",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
            Duration::from_secs(5),
        )
        .await;
    if !answer.is_ok_and(|a| a.status() == 200) {
        ctx.stats.error("fault append: the publish failed");
    }
}
