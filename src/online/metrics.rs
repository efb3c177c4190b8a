//! The service's Prometheus metrics (`GET /metrics`, text exposition format 0.0.4):
//! requests by path and status, latency histograms by path, the ledger's transactions by
//! state, the CRLs' age and time left, and the process's SM2 operations. Counts only —
//! never a reader's key, a card number or a receipt.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, seconds.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// The paths the service has; anything else is counted as `other` (no label from a
/// client's URL, so the series stay few).
const PATHS: [&str; 18] = [
    "/v1/health",
    "/v1/order",
    "/v1/recharge/order",
    "/v1/recharge/order/query",
    "/v1/provider/notify",
    "/v1/merchant/orders",
    "/v1/merchant/orders/query",
    "/v1/merchant/orders/cancel",
    "/v1/merchant/orders/refund",
    "/v1/host",
    "/v1/purchase/start",
    "/v1/query-script",
    "/v1/recharge/start",
    "/v1/recharge/complete",
    "/v1/journal",
    "/v1/status",
    "/metrics",
    "other",
];

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Request counters and latency histograms.
#[derive(Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

fn known(path: &str) -> &'static str {
    PATHS
        .iter()
        .find(|p| **p == path)
        .copied()
        .unwrap_or("other")
}

impl Metrics {
    /// One answered request.
    pub(crate) fn record(&self, path: &str, status: u16, took: Duration) {
        let Ok(mut m) = self.inner.lock() else {
            return;
        };
        let path = known(path);
        *m.requests.entry((path, status)).or_default() += 1;
        let h = m.latency.entry(path).or_default();
        let secs = took.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The exposition text: these counters, then `extra` (gauges read at scrape time).
    pub(crate) fn render(&self, extra: &Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP cardvm_requests_total Requests answered, by path and HTTP status."
        );
        let _ = writeln!(out, "# TYPE cardvm_requests_total counter");
        if let Ok(m) = self.inner.lock() {
            for ((path, status), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "cardvm_requests_total{{path=\"{path}\",status=\"{status}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP cardvm_request_duration_seconds Time to answer a request, by path."
            );
            let _ = writeln!(out, "# TYPE cardvm_request_duration_seconds histogram");
            for (path, h) in &m.latency {
                for (i, le) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "cardvm_request_duration_seconds_bucket{{path=\"{path}\",le=\"{le}\"}} {}",
                        h.buckets[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "cardvm_request_duration_seconds_bucket{{path=\"{path}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "cardvm_request_duration_seconds_sum{{path=\"{path}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "cardvm_request_duration_seconds_count{{path=\"{path}\"}} {}",
                    h.count
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP cardvm_ledger_transactions Transactions in the ledger, by state."
        );
        let _ = writeln!(out, "# TYPE cardvm_ledger_transactions gauge");
        for (state, n) in &extra.ledger {
            let _ = writeln!(
                out,
                "cardvm_ledger_transactions{{state=\"{}\"}} {n}",
                escape(state)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cardvm_crl_age_seconds Seconds since each installed CRL's thisUpdate."
        );
        let _ = writeln!(out, "# TYPE cardvm_crl_age_seconds gauge");
        for (issuer, age, _) in &extra.crls {
            let _ = writeln!(
                out,
                "cardvm_crl_age_seconds{{issuer=\"{}\"}} {age}",
                escape(issuer)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cardvm_crl_expires_in_seconds Seconds until each installed CRL's nextUpdate (negative: expired)."
        );
        let _ = writeln!(out, "# TYPE cardvm_crl_expires_in_seconds gauge");
        for (issuer, _, left) in &extra.crls {
            let _ = writeln!(
                out,
                "cardvm_crl_expires_in_seconds{{issuer=\"{}\"}} {left}",
                escape(issuer)
            );
        }
        let c = crate::crypto::sm2::counts();
        let _ = writeln!(
            out,
            "# HELP cardvm_sm2_operations_total SM2 operations by this process."
        );
        let _ = writeln!(out, "# TYPE cardvm_sm2_operations_total counter");
        for (op, n) in [
            ("sign", c.sign),
            ("verify", c.verify),
            ("encrypt", c.encrypt),
            ("decrypt", c.decrypt),
        ] {
            let _ = writeln!(out, "cardvm_sm2_operations_total{{op=\"{op}\"}} {n}");
        }
        out
    }
}

/// Values read at scrape time.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    /// Transactions by state.
    pub(crate) ledger: Vec<(String, u64)>,
    /// Per CRL issuer: age and time left (seconds).
    pub(crate) crls: Vec<(String, i64, i64)>,
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
