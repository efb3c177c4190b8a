//! Paid notifications to merchants (`docs/clearing.md`): posted, signed by the card
//! company, until the merchant answers 2xx.
//!
//! The ledger decides what is owed (an order whose purchase committed and that its
//! merchant has not acknowledged) and who delivers it (a claim with a lease), so any
//! number of service instances run this loop over one database and a notification is
//! neither lost when an instance dies nor sent by two at once. A merchant may still see
//! one twice (an answer lost on the way back): `notify_id` is stable.

use std::sync::Arc;
use std::time::Duration;

use super::Service;
use crate::issuer::merchant::DueNotification;
use crate::online::protocol::*;

/// How the notifier polls and backs off.
#[derive(Debug, Clone, Copy)]
pub struct NotifyConfig {
    /// How often the ledger is asked for due notifications.
    pub poll: Duration,
    /// The first retry waits this long (seconds); each next one twice as long…
    pub backoff_base: u64,
    /// …up to this (seconds).
    pub backoff_max: u64,
    /// How long one delivery may take before the merchant counts as not answering.
    pub timeout: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            poll: Duration::from_secs(2),
            backoff_base: 5,
            backoff_max: 3_600,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The wait before attempt `attempts + 1`.
fn backoff(c: &NotifyConfig, attempts: u64) -> u64 {
    let shift = attempts.saturating_sub(1).min(30);
    c.backoff_base
        .saturating_mul(1u64 << shift)
        .min(c.backoff_max)
        .max(1)
}

/// Whether a notification URL is acceptable: `https://…`, or `http://` to this machine
/// only (tests and a merchant's local relay; payment data does not cross a network in
/// clear).
pub fn notify_url_ok(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("notification URL `{url}`: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = parsed.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            {
                Ok(())
            } else {
                Err(format!(
                    "notification URL `{url}`: http:// only to this machine (127.0.0.1, ::1, localhost); use https://"
                ))
            }
        }
        other => Err(format!(
            "notification URL `{url}`: scheme {other} (use https://)"
        )),
    }
}

/// Runs until the task is aborted.
pub(super) async fn run(svc: Arc<Service>) {
    let c = svc.config.notify;
    let mut builder = reqwest::Client::builder()
        .timeout(c.timeout)
        .connect_timeout(c.timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = svc.notify_ca.get() {
        for cert in reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default() {
            builder = builder.add_root_certificate(cert);
        }
    }
    let http = match builder.build() {
        Ok(h) => h,
        Err(e) => {
            eprintln!(
                "{}",
                serde_json::json!({"notify": "disabled", "error": e.to_string()})
            );
            return;
        }
    };
    loop {
        deliver_due(&svc, &http, &c).await;
        tokio::time::sleep(c.poll).await;
    }
}

async fn deliver_due(svc: &Arc<Service>, http: &reqwest::Client, c: &NotifyConfig) {
    let ledger = svc.issuer.ledger();
    let now = svc.issuer.now();
    let due = match ledger.due_notifications(now, 32).await {
        Ok(d) => d,
        Err(_) => return, // the ledger is away; the next poll asks again
    };
    for n in due {
        let lease = now.saturating_add(c.timeout.as_secs().saturating_mul(3).max(30));
        match ledger
            .claim_notification(&n.order.order_id, n.next_at, lease)
            .await
        {
            Ok(true) => {}
            _ => continue, // another instance has it, or the ledger failed
        }
        let attempt = n.order.notify_attempts + 1;
        let result = post(svc, http, &n, attempt).await;
        let now = svc.issuer.now();
        let error = result.err();
        let _ = ledger
            .notification_result(
                &n.order.order_id,
                now,
                error.as_deref(),
                now.saturating_add(backoff(c, attempt)),
            )
            .await;
        if svc.config.log {
            eprintln!(
                "{}",
                serde_json::json!({
                    "ts": now,
                    "notify": n.order.order_id,
                    "merchant": n.order.merchant_id,
                    "attempt": attempt,
                    "acked": error.is_none(),
                    "error": error,
                })
            );
        }
    }
}

/// One delivery: `Ok` when the merchant answered 2xx.
async fn post(
    svc: &Service,
    http: &reqwest::Client,
    n: &DueNotification,
    attempt: u64,
) -> Result<(), String> {
    let o = &n.order;
    let body = serde_json::to_vec(&Notification {
        notify_id: format!("{}.paid", o.order_id),
        event: "order.paid".into(),
        order_id: o.order_id.clone(),
        merchant_id: o.merchant_id.clone(),
        merchant_order: o.merchant_order.clone(),
        amount: o.amount,
        paid_at: o.paid_at.unwrap_or_default(),
        card: o.card_id.as_deref().map(mask_card).unwrap_or_default(),
        attempt,
    })
    .map_err(|e| e.to_string())?;
    let url = reqwest::Url::parse(&n.url).map_err(|e| format!("URL: {e}"))?;
    let time = svc.issuer.now();
    let sig = svc
        .issuer
        .sign(&notification_signing_input(
            url.path(),
            &o.merchant_id,
            time,
            &body,
        ))
        .map_err(|e| format!("signing: {e}"))?;
    let resp = http
        .post(url)
        .header(HDR_TIME, time.to_string())
        .header(HDR_SIGNATURE, to_hex(&sig))
        .header(HDR_ISSUER_KEY, to_hex(&svc.issuer.public_key().key_id()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        })?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("merchant answered {}", resp.status().as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let c = NotifyConfig {
            backoff_base: 5,
            backoff_max: 60,
            ..NotifyConfig::default()
        };
        let waits: Vec<u64> = (1..=6).map(|a| backoff(&c, a)).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(backoff(&c, u64::MAX), 60);
    }

    #[test]
    fn notification_urls() {
        assert!(notify_url_ok("https://shop.example/notify").is_ok());
        assert!(notify_url_ok("http://127.0.0.1:9/n").is_ok());
        assert!(notify_url_ok("http://[::1]:9/n").is_ok());
        assert!(notify_url_ok("http://localhost/n").is_ok());
        assert!(notify_url_ok("http://shop.example/n").is_err());
        assert!(notify_url_ok("http://10.0.0.1/n").is_err());
        assert!(notify_url_ok("ftp://shop.example/n").is_err());
        assert!(notify_url_ok("not a url").is_err());
    }
}
