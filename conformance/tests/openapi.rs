//! `docs/openapi.json` against the service it describes.
//!
//! Statically: the document's `$ref`s resolve, its paths are exactly the routes of
//! `router()` (read from the source, so an undocumented new route fails here), its refusal
//! codes are exactly the `(status, code)` pairs the service's source can answer, every
//! schema compiles as JSON Schema 2020-12, the signing inputs it spells out are the ones
//! `protocol` computes, and each protocol struct serializes to what its schema says
//! (field names, types, which fields may be absent and which may be null).
//!
//! Live: one service on loopback (SQLite) with a reader, a simulated card and a merchant,
//! behind a recording proxy. Loads (one torn and recovered), a merchant's order paid from
//! the card, refunded and cancelled, journal, status and a series of refusals go through
//! the library's own clients; every answer is then checked against the document (its
//! status must be documented for the path, its body must match the schema, with no
//! undocumented field), and every request the service accepted must match the request
//! schema. Finally each request schema is varied field by field from a body the service
//! accepted (a field left out, a field of another type, an unknown field): a body the
//! document rejects must be answered 400, and one it allows (an optional field left out)
//! must not be answered `bad_json`.

#[path = "../../tests/support/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::issuer::merchant::MerchantRow;
use cardvm::online::client::{
    Client, ClientError, MerchantClient, new_request_id, pay_order, recharge, run_bundle,
};
use cardvm::online::protocol::*;
use cardvm::reader::Reader;
use cardvm::receipt::{Outcome, Receipt};
use cardvm::sim::CpuCard;
use cardvm::vm::NoTrace;
use cluster::{CITY, Cluster, card};
use serde_json::{Value, json};

/// A file of the repository (this crate is conformance/ in it).
fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn document() -> Value {
    let text = std::fs::read_to_string(repo("docs/openapi.json")).expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is not JSON")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// The document as a set of schemas.

/// A local `$ref` (`#/…`) of the document, resolved.
fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    doc.pointer(r.strip_prefix('#')?)
}

/// `v` with its `$ref`s followed.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    let mut v = v;
    for _ in 0..16 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => v = resolve(doc, r).unwrap_or_else(|| panic!("unresolved $ref {r}")),
            None => return v,
        }
    }
    panic!("$ref chain too long")
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(s)) => out.push(s.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// The document's answers are open to new fields (its compatibility rule), but the
/// service must not send a field the document does not name: the checks close every
/// object schema that lists its properties.
fn closed(doc: &Value) -> Value {
    fn close(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                    m.insert("additionalProperties".into(), Value::Bool(false));
                }
                m.values_mut().for_each(close);
            }
            Value::Array(a) => a.iter_mut().for_each(close),
            _ => {}
        }
    }
    let mut d = doc.clone();
    close(&mut d);
    d
}

/// Compiled validators for schemas of the document: a schema's `$ref`s point into the
/// document's `components`, so each is compiled as a root that carries them.
struct Schemas {
    doc: Value,
    compiled: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Schemas {
    /// The document as written: what a body the service is sent must match.
    fn new(doc: &Value) -> Self {
        Schemas {
            doc: doc.clone(),
            compiled: Mutex::default(),
        }
    }

    /// The document closed ([`closed`]): what the service's own bodies must match.
    fn closed(doc: &Value) -> Self {
        Schemas::new(&closed(doc))
    }

    fn validator(&self, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        let key = schema.to_string();
        if let Some(v) = self.compiled.lock().expect("lock").get(&key) {
            return Ok(v.clone());
        }
        let mut root = schema.clone();
        let obj = root
            .as_object_mut()
            .ok_or_else(|| format!("schema is not an object: {schema}"))?;
        obj.insert("components".into(), self.doc["components"].clone());
        let v = Arc::new(
            jsonschema::draft202012::options()
                .build(&root)
                .map_err(|e| format!("schema {schema} does not compile: {e}"))?,
        );
        self.compiled.lock().expect("lock").insert(key, v.clone());
        Ok(v)
    }

    /// `Ok` when `instance` matches `schema`; else every error.
    fn check(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let v = self.validator(schema)?;
        let errors: Vec<String> = v
            .iter_errors(instance)
            .map(|e| format!("{e} (at `{}`)", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn named(&self, name: &str) -> Value {
        assert!(
            self.doc["components"]["schemas"].get(name).is_some(),
            "no schema {name}"
        );
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }
}

/// The documented operations: `(path, method)` → operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if ["get", "post", "put", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                ops.insert((path.clone(), method.clone()), op.clone());
            }
        }
    }
    ops
}

fn request_schema(op: &Value) -> Option<&Value> {
    op.pointer("/requestBody/content/application~1json/schema")
}

// ---------------------------------------------------------------------------------------
// What the source says.

/// `(path, method)` of every `.route("…", method(…))` in `router()`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(repo("src/online/service/mod.rs")).expect("service source");
    let mut routes = BTreeSet::new();
    for piece in src.split(".route(\"").skip(1) {
        let (path, rest) = piece.split_once('"').expect("route path");
        let method = rest
            .trim_start_matches([',', ' '])
            .split('(')
            .next()
            .expect("route method");
        routes.insert((path.to_string(), method.to_string()));
    }
    assert!(routes.len() >= 10, "router() not found: {routes:?}");
    routes
}

/// Every `(status, code)` the service's source can refuse with: each `StatusCode::X,
/// "code"` (in `Refusal::new` and in the `IssuerError` mapping) and each `bad("code", …)`
/// (400).
fn refusals_in_source() -> BTreeSet<(u16, String)> {
    let status = |name: &str| -> u16 {
        match name {
            "BAD_REQUEST" => 400,
            "UNAUTHORIZED" => 401,
            "FORBIDDEN" => 403,
            "NOT_FOUND" => 404,
            "REQUEST_TIMEOUT" => 408,
            "CONFLICT" => 409,
            "PAYLOAD_TOO_LARGE" => 413,
            "UNPROCESSABLE_ENTITY" => 422,
            "TOO_MANY_REQUESTS" => 429,
            "INTERNAL_SERVER_ERROR" => 500,
            "SERVICE_UNAVAILABLE" => 503,
            other => panic!("StatusCode::{other} is new to this test: document it"),
        }
    };
    let code_after = |s: &str| -> Option<String> {
        let s = s.strip_prefix(",\"").or_else(|| s.strip_prefix('"'))?;
        let (code, _) = s.split_once('"')?;
        (!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .then(|| code.to_string())
    };
    let mut found = BTreeSet::new();
    let dir = repo("src/online/service");
    for entry in std::fs::read_dir(&dir).expect("service dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text: String = std::fs::read_to_string(&path)
            .expect("source")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        for piece in text.split("StatusCode::").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            if let Some(code) = code_after(&piece[name.len()..]) {
                found.insert((status(&name), code));
            }
        }
        for piece in text.split("bad(\"").skip(1) {
            if let Some(code) = code_after(&format!("\"{piece}")) {
                found.insert((400, code));
            }
        }
        // The body extractor's own rejection: the guard has already read the body under
        // the same limit, so what is left of it is the length limit's 413.
        for piece in text.split("e.status(),").skip(1) {
            if let Some(code) = code_after(piece) {
                found.insert((413, code));
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------
// The static checks.

#[test]
fn the_document_covers_the_router_and_every_refusal() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");

    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        assert!(
            r.starts_with("#/") && resolve(&doc, r).is_some(),
            "$ref {r} does not resolve in the document"
        );
    }

    let ops = operations(&doc);
    let documented: BTreeSet<(String, String)> = ops.keys().cloned().collect();
    let routed = routes_in_source();
    assert_eq!(
        documented, routed,
        "docs/openapi.json paths differ from router() (left: documented, right: routed)"
    );

    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("securitySchemes");
    let mut ids = BTreeSet::new();
    for ((path, method), op) in &ops {
        let what = format!("{method} {path}");
        let id = op["operationId"].as_str().expect("operationId");
        assert!(ids.insert(id.to_string()), "{what}: operationId {id} twice");
        assert!(op["responses"].get("200").is_some(), "{what}: no 200");
        for (status, resp) in op["responses"].as_object().expect("responses") {
            if status != "200" {
                assert_eq!(
                    resp["$ref"],
                    format!("#/components/responses/Refusal{status}"),
                    "{what}: a refusal {status} is the shared Refusal{status}"
                );
            }
        }
        let security = op["security"].as_array().expect("security");
        let names: BTreeSet<&str> = security
            .iter()
            .flat_map(|req| req.as_object().expect("requirement").keys())
            .map(String::as_str)
            .collect();
        for n in &names {
            assert!(schemes.contains_key(*n), "{what}: no security scheme {n}");
        }
        let expected: BTreeSet<&str> = match (method.as_str(), path.starts_with("/v1/merchant/")) {
            ("get", _) => BTreeSet::new(),
            (_, false) if path == "/v1/provider/notify" => {
                ["providerId", "providerTime", "providerSignature"].into()
            }
            (_, true) => ["merchantId", "merchantTime", "merchantSignature"].into(),
            (_, false) => ["readerId", "readerTime", "readerSignature"].into(),
        };
        assert_eq!(names, expected, "{what}: security");
        if method == "post" {
            assert!(request_schema(op).is_some(), "{what}: no JSON request body");
            assert!(
                op["requestBody"]["required"] == true,
                "{what}: body required"
            );
        }
    }

    // Refusal codes: the document names exactly what the source can answer, each with
    // its status, and ErrorBody's list is their union.
    let source = refusals_in_source();
    let schemas = &doc["components"]["schemas"];
    let mut documented_pairs = BTreeSet::new();
    for (name, s) in schemas.as_object().expect("schemas") {
        let Some(status) = name.strip_prefix("Refusal") else {
            continue;
        };
        let status: u16 = status.parse().expect("RefusalNNN");
        for code in s["properties"]["code"]["enum"]
            .as_array()
            .expect("code enum")
        {
            documented_pairs.insert((status, code.as_str().expect("code").to_string()));
        }
        assert!(
            doc["components"]["responses"].get(name.as_str()).is_some(),
            "no response {name}"
        );
    }
    assert_eq!(
        documented_pairs, source,
        "refusals: left documented (RefusalNNN), right in src/online/service"
    );
    let union: BTreeSet<String> = source.iter().map(|(_, c)| c.clone()).collect();
    let error_body: BTreeSet<String> = schemas["ErrorBody"]["properties"]["code"]["enum"]
        .as_array()
        .expect("ErrorBody code enum")
        .iter()
        .map(|c| c.as_str().expect("code").to_string())
        .collect();
    assert_eq!(error_body, union, "ErrorBody.code lists every code");

    // Every schema compiles (the crate checks each against the 2020-12 meta-schema).
    let s = Schemas::new(&doc);
    for name in schemas.as_object().expect("schemas").keys() {
        s.validator(&s.named(name))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for op in ops.values() {
        if let Some(r) = request_schema(op) {
            s.validator(r).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    // The signing inputs the document spells out are the ones protocol.rs computes.
    let sm = &doc["components"]["securitySchemes"];
    let body = b"{}";
    for (text, input) in [
        (
            &sm["readerSignature"]["description"],
            signing_input("POST", "/v1/status", "R001", 1_796_671_700, body),
        ),
        (
            &sm["merchantSignature"]["description"],
            merchant_signing_input(
                "POST",
                "/v1/merchant/orders/query",
                "shop",
                1_796_671_700,
                body,
            ),
        ),
        (
            &doc["webhooks"]["orderPaid"]["post"]["description"],
            notification_signing_input("/cardvm/notify", "shop", 1_796_671_700, body),
        ),
    ] {
        let example = String::from_utf8(input)
            .expect("utf-8")
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = text.as_str().expect("description");
        assert!(
            text.contains(&example),
            "the document's signing example is not protocol's:\n{example}\nin:\n{text}"
        );
    }
}

/// A protocol struct serialized both ways: every optional field set, and none.
fn extremes<T: serde::Serialize>(full: &T, bare: &T) -> (Value, Value) {
    (
        serde_json::to_value(full).expect("serialize"),
        serde_json::to_value(bare).expect("serialize"),
    )
}

/// A protocol struct without optional fields, serialized.
fn plain<T: serde::Serialize>(x: &T) -> (Value, Value) {
    extremes(x, x)
}

fn settle(decided: bool) -> SettleReply {
    SettleReply {
        reader_id: "R001".into(),
        seq: 7,
        kind: if decided { "recover" } else { "load" }.into(),
        state: "committed".into(),
        already: false,
        decided_seq: decided.then_some(6),
        decided_state: decided.then(|| "recovered-committed".into()),
    }
}

const ORDER: &str = "O7431C1E73253B9801C78";

fn order_reply(full: bool) -> OrderReply {
    OrderReply {
        order_id: ORDER.into(),
        merchant_id: "shop".into(),
        merchant_name: "Corner Shop".into(),
        merchant_order: "A-1001".into(),
        amount: 2_500,
        amount_display: yuan(2_500),
        description: "Two notebooks".into(),
        state: if full { "refunded" } else { "open" }.into(),
        created_at: 1_796_671_700,
        expires_at: 1_796_672_600,
        paid_at: full.then_some(1_796_671_758),
        card: full.then(|| mask_card("4100000089999985")),
        refunded_at: full.then_some(1_796_671_800),
        fee: full.then_some(15),
    }
}

fn bundle(recovery: bool) -> BundleReply {
    BundleReply {
        kind: if recovery { "recover" } else { "load" }.into(),
        seq: 2,
        city: CITY,
        card_id: "4100000000000000".into(),
        amount: if recovery { 0 } else { 100 },
        recovers_seq: recovery.then_some(1),
        expires: 3,
        command: "00".into(),
        data: "01".into(),
    }
}

#[test]
fn each_protocol_struct_is_its_schema_field_by_field() {
    let doc = document();
    let s = Schemas::closed(&doc);
    let id = || "7f3a".to_string();
    let item = JournalItem {
        journal_seq: 1,
        receipt: "{}".into(),
    };
    let start = |order_id: Option<&str>| StartRequest {
        request_id: id(),
        query: "{}".into(),
        amount: 100,
        order_id: order_id.map(String::from),
    };
    let order = |order_id: Option<&str>, merchant_order: Option<&str>| OrderRequest {
        request_id: id(),
        order_id: order_id.map(String::from),
        merchant_order: merchant_order.map(String::from),
    };
    let create = |expires_in| CreateOrderRequest {
        request_id: id(),
        merchant_order: "A-1001".into(),
        amount: 1,
        description: "x".into(),
        expires_in,
    };
    let result = |settled: bool| JournalResult {
        journal_seq: 1,
        status: if settled { "settled" } else { "refused" }.into(),
        settled: settled.then(|| settle(true)),
        error: (!settled).then(|| "no".into()),
    };
    let cases: Vec<(&str, (Value, Value))> = vec![
        (
            "Health",
            plain(&Health {
                status: "ok".into(),
                time: 1,
                version: "0.1.0".into(),
            }),
        ),
        (
            "QueryScriptRequest",
            plain(&QueryScriptRequest {
                request_id: id(),
                city: CITY,
            }),
        ),
        (
            "SealedReply",
            plain(&SealedReply {
                seq: 1,
                expires: 2,
                script: "0A0B".into(),
            }),
        ),
        ("StartRequest", extremes(&start(Some(ORDER)), &start(None))),
        ("BundleReply", extremes(&bundle(true), &bundle(false))),
        (
            "CompleteRequest",
            plain(&CompleteRequest {
                request_id: id(),
                receipt: "{}".into(),
            }),
        ),
        ("SettleReply", extremes(&settle(true), &settle(false))),
        (
            "HostRequest",
            plain(&HostRequest {
                request_id: id(),
                seq: 1,
                apdu: "805200000B".into(),
            }),
        ),
        (
            "HostReply",
            plain(&HostReply {
                response: "9000".into(),
            }),
        ),
        ("JournalItem", plain(&item)),
        (
            "JournalRequest",
            plain(&JournalRequest {
                request_id: id(),
                items: vec![item.clone()],
            }),
        ),
        ("JournalResult", extremes(&result(true), &result(false))),
        (
            "JournalReply",
            plain(&JournalReply {
                acknowledged_up_to: 1,
                results: vec![result(true), result(false)],
            }),
        ),
        (
            "StatusRequest",
            plain(&StatusRequest {
                request_id: id(),
                seq: 1,
            }),
        ),
        (
            "StatusReply",
            plain(&StatusReply {
                seq: 1,
                kind: "purchase".into(),
                card_id: "41".into(),
                amount: 1,
                state: "unknown".into(),
            }),
        ),
        (
            "OrderRequest",
            extremes(&order(Some(ORDER), Some("A-1001")), &order(None, None)),
        ),
        (
            "CreateOrderRequest",
            extremes(&create(Some(60)), &create(None)),
        ),
        (
            "RefundRequest",
            plain(&RefundRequest {
                request_id: id(),
                order_id: ORDER.into(),
                reason: "why".into(),
            }),
        ),
        (
            "OrderReply",
            extremes(&order_reply(true), &order_reply(false)),
        ),
        (
            "Notification",
            plain(&Notification {
                notify_id: format!("{ORDER}.paid"),
                event: "order.paid".into(),
                order_id: ORDER.into(),
                merchant_id: "shop".into(),
                merchant_order: "A-1001".into(),
                amount: 2_500,
                paid_at: 1,
                card: mask_card("4100000089999985"),
                attempt: 1,
            }),
        ),
        (
            "RechargeOrderRequest",
            plain(&RechargeOrderRequest {
                request_id: id(),
                city: 731,
                card_id: "4100000089999985".into(),
                amount: 10_000,
                provider_id: "bank".into(),
            }),
        ),
        (
            "RechargeOrderReply",
            extremes(
                &RechargeOrderReply {
                    order_id: "P1".into(),
                    city: 731,
                    card_id: "4100000089999985".into(),
                    amount: 10_000,
                    amount_display: "100.00".into(),
                    provider_id: "bank".into(),
                    state: "paid".into(),
                    expires_at: 2,
                    paid_at: Some(1),
                },
                &RechargeOrderReply {
                    order_id: "P1".into(),
                    city: 731,
                    card_id: "4100000089999985".into(),
                    amount: 10_000,
                    amount_display: "100.00".into(),
                    provider_id: "bank".into(),
                    state: "unpaid".into(),
                    expires_at: 2,
                    paid_at: None,
                },
            ),
        ),
        (
            "ProviderNotification",
            plain(&ProviderNotification {
                order_id: "P1".into(),
                amount: 10_000,
                provider_ref: "B-1".into(),
                status: "paid".into(),
            }),
        ),
        (
            "ProviderAck",
            plain(&ProviderAck {
                order_id: "P1".into(),
                result: "recorded".into(),
                state: "paid".into(),
            }),
        ),
        (
            "ErrorBody",
            plain(&ErrorBody {
                code: "unauthenticated".into(),
                error: "x".into(),
            }),
        ),
    ];
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object().expect("object").keys().cloned().collect()
    };
    for (name, (full, bare)) in &cases {
        let schema = &doc["components"]["schemas"][*name];
        let props: BTreeSet<String> = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: no properties"))
            .keys()
            .cloned()
            .collect();
        let required: BTreeSet<String> = schema["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no required"))
            .iter()
            .map(|k| k.as_str().expect("name").to_string())
            .collect();
        // Every field, by name; absent-able exactly when serde skips it.
        assert_eq!(
            props,
            keys(full),
            "{name}: properties vs the struct's fields"
        );
        assert_eq!(
            required,
            keys(bare),
            "{name}: required vs the fields always sent"
        );
        for v in [full, bare] {
            s.check(&s.named(name), v)
                .unwrap_or_else(|e| panic!("{name}: {v} does not match its schema: {e}"));
        }
    }
    // The request bodies refuse unknown fields exactly where serde does (all of them).
    for name in [
        "QueryScriptRequest",
        "StartRequest",
        "CompleteRequest",
        "HostRequest",
        "JournalItem",
        "JournalRequest",
        "StatusRequest",
        "OrderRequest",
        "CreateOrderRequest",
        "RefundRequest",
        "RechargeOrderRequest",
        "ProviderNotification",
    ] {
        assert_eq!(
            doc["components"]["schemas"][name]["additionalProperties"], false,
            "{name}: deny_unknown_fields"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Live traffic.

/// One request through the recording proxy and its answer.
#[derive(Debug, Clone)]
struct Exchange {
    method: String,
    path: String,
    request: Vec<u8>,
    status: u16,
    content_type: String,
    response: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Exchange>>>;

/// A plain-HTTP proxy on loopback in front of the HTTPS service that keeps every
/// exchange, so what the library's own clients send and receive (host link and retries
/// included) is checked as it went over the wire. The signature covers the method, path
/// and body, never the host, so forwarding keeps it valid.
async fn recording_proxy(upstream: &str, ca_pem: &[u8], log: Log) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.expect("CA pem")).expect("CA");
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("proxy client");
    let upstream = upstream.to_string();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (http, upstream, log) = (http.clone(), upstream.clone(), log.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 4 << 20)
                .await
                .expect("request body");
            let path = parts.uri.path().to_string();
            let method =
                reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).expect("method");
            let mut out = http.request(method, format!("{upstream}{}", parts.uri));
            for (k, v) in &parts.headers {
                if k != "host" && k != "content-length" {
                    out = out.header(k.as_str(), v.as_bytes());
                }
            }
            let resp = out.body(body.to_vec()).send().await.expect("upstream");
            let status = resp.status().as_u16();
            let header = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let (content_type, allow) = (header("content-type"), header("allow"));
            let bytes = resp.bytes().await.expect("upstream body");
            log.lock().expect("lock").push(Exchange {
                method: parts.method.to_string(),
                path,
                request: body.to_vec(),
                status,
                content_type: content_type.clone().unwrap_or_default(),
                response: bytes.to_vec(),
            });
            let mut r = axum::response::Response::new(axum::body::Body::from(bytes));
            *r.status_mut() = axum::http::StatusCode::from_u16(status).expect("status");
            for (name, value) in [("content-type", content_type), ("allow", allow)] {
                if let Some(v) = value {
                    r.headers_mut().insert(name, v.parse().expect("header"));
                }
            }
            r
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// What the merchant's notification endpoint received: path, headers, body.
type Notes = Arc<Mutex<Vec<(String, BTreeMap<String, String>, Vec<u8>)>>>;

async fn notification_endpoint() -> (String, Notes) {
    let got: Notes = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.expect("body");
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect();
            seen.lock()
                .expect("lock")
                .push((parts.uri.path().to_string(), headers, body.to_vec()));
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/shop/notify"), got)
}

/// Requests the library's clients cannot make (a malformed body, a wrong clock, a wrong
/// method), signed by hand as protocol.rs says.
struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> (u16, Vec<u8>) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        let resp = r.body(body).send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.bytes().await.expect("body").to_vec())
    }

    async fn signed(
        &self,
        path: &str,
        reader: (&str, &Sm2PrivateKey),
        time: u64,
        body: &[u8],
    ) -> (u16, Value) {
        let sig = reader
            .1
            .sign(
                &mut os_rng(),
                &signing_input("POST", path, reader.0, time, body),
            )
            .expect("sign");
        let (status, bytes) = self
            .send(
                reqwest::Method::POST,
                path,
                &[
                    (HDR_READER, reader.0.to_string()),
                    (HDR_TIME, time.to_string()),
                    (HDR_SIGNATURE, to_hex(&sig)),
                ],
                body.to_vec(),
            )
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn code(v: &(u16, Value)) -> (u16, &str) {
    (v.0, v.1["code"].as_str().unwrap_or_default())
}

/// City 731's card `i` as its real cards are (the authentication code in MAC1), which
/// the host-secured purchase script expects.
fn card_731(i: usize, balance: u32) -> CpuCard {
    let mut p = card(i, balance).to_profile();
    let v = cardvm::sim::Variant {
        auth_code: Some([0x3A, 0x5C, 0x7E, 0x91, 0x02, 0xB4, 0xD6, 0xF8]),
        ..cardvm::sim::Variant::default()
    };
    p.variant = (&v).into();
    p.build().expect("card")
}

async fn query(client: &Client, reader: &mut Reader, card: &mut CpuCard) -> Receipt {
    let q = client.query_script(CITY).await.expect("query script");
    let q = from_hex(&q.script).expect("hex");
    reader
        .query(&q, b"nonce", card, &mut NoTrace, &mut os_rng())
        .expect("query")
        .receipt
}

/// Checks one recorded exchange against the document: the answer against it closed, a
/// request the service accepted against it as written.
fn check_exchange(
    doc: &Value,
    s: &Schemas,
    requests: &Schemas,
    ex: &Exchange,
) -> Result<(), String> {
    let media = ex
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let json_body = || -> Result<Value, String> {
        serde_json::from_slice(&ex.response).map_err(|e| format!("answer is not JSON: {e}"))
    };
    let Some(item) = doc["paths"].get(&ex.path) else {
        // Outside the documented paths only the fallback answers (info.description).
        if ex.status != 404 || media != "application/json" {
            return Err(format!("undocumented path answered {}", ex.status));
        }
        return s.check(&s.named("Refusal404"), &json_body()?);
    };
    let Some(op) = item.get(ex.method.to_lowercase()) else {
        // Another method on a known path (info.description): 405, empty.
        return if ex.status == 405 && ex.response.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "undocumented method answered {} {:?}",
                ex.status,
                String::from_utf8_lossy(&ex.response)
            ))
        };
    };
    let resp = op["responses"]
        .get(ex.status.to_string())
        .map(|r| deref(doc, r))
        .ok_or_else(|| format!("status {} is not documented for this path", ex.status))?;
    let content = resp["content"]
        .as_object()
        .ok_or("documented without content")?;
    let schema = content
        .get(&media)
        .map(|m| &m["schema"])
        .ok_or_else(|| format!("content type `{}` is not documented", ex.content_type))?;
    if media == "application/json" {
        s.check(schema, &json_body()?)
            .map_err(|e| format!("answer: {e}"))?;
    } else {
        let text = String::from_utf8(ex.response.clone()).map_err(|e| e.to_string())?;
        s.check(schema, &Value::String(text))?;
    }
    if ex.status == 200
        && let Some(req) = request_schema(op)
    {
        // The service accepted this body: the document must accept it too.
        let body: Value = serde_json::from_slice(&ex.request)
            .map_err(|e| format!("accepted request is not JSON: {e}"))?;
        requests
            .check(req, &body)
            .map_err(|e| format!("accepted request {body}: {e}"))?;
    }
    Ok(())
}

/// The JSON type a schema names (through `$ref` and a single `allOf`).
fn schema_type<'a>(doc: &'a Value, s: &'a Value) -> Option<&'a str> {
    let s = deref(doc, s);
    if let Some(t) = s["type"].as_str() {
        return Some(t);
    }
    s["allOf"].get(0).and_then(|x| schema_type(doc, x))
}

/// The properties of a request schema, through `$ref` and `allOf`.
fn properties(doc: &Value, s: &Value) -> serde_json::Map<String, Value> {
    let s = deref(doc, s);
    let mut props = s["properties"].as_object().cloned().unwrap_or_default();
    for part in s["allOf"].as_array().into_iter().flatten() {
        props.extend(properties(doc, part));
    }
    props
}

/// How a variant of an accepted body differs from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A field left out: the document says whether that is allowed.
    Removed,
    /// A field of another JSON type, or an unknown field: never allowed.
    Broken,
}

/// Variants of a body the service accepted: each field left out, each field of another
/// JSON type, an unknown field; the same inside the first element of an array of
/// objects.
fn variants(doc: &Value, schema: &Value, body: &Value) -> Vec<(String, Change, Value)> {
    let props = properties(doc, schema);
    let mut out = Vec::new();
    for name in body.as_object().expect("object").keys() {
        let mut b = body.clone();
        b.as_object_mut().expect("object").remove(name);
        out.push((format!("without `{name}`"), Change::Removed, b));
    }
    for (name, p) in &props {
        let wrong = match schema_type(doc, p) {
            Some("integer") | Some("number") => json!("1"),
            Some("string") => json!(1),
            Some("array") => json!({}),
            Some("object") => json!([]),
            Some("boolean") => json!("true"),
            other => panic!("`{name}`: no type to break ({other:?})"),
        };
        let mut b = body.clone();
        b[name.as_str()] = wrong;
        out.push((format!("with `{name}` of another type"), Change::Broken, b));
        if schema_type(doc, p) == Some("array")
            && let Some(first) = body[name.as_str()].get(0)
        {
            let items = &deref(doc, p)["items"];
            for (what, change, item) in variants(doc, items, first) {
                let mut b = body.clone();
                b[name.as_str()][0] = item;
                out.push((format!("{what} in `{name}[0]`"), change, b));
            }
        }
    }
    let mut b = body.clone();
    b["unexpected"] = json!(1);
    out.push(("with an unknown field".into(), Change::Broken, b));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_service_answers_as_documented() {
    let started = Instant::now();
    let doc = document();
    let schemas = Schemas::closed(&doc);
    let requests = Schemas::new(&doc);
    let dir = std::env::temp_dir().join(format!("cardvm-openapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let _cleanup = cluster::Temp(dir.clone());
    let db = dir.join("issuer.db");
    let c = Cluster::start(db.to_str().expect("path"), 1, 1, false).await;
    let p = repo("scripts/city0731-des3/purchase_host.cvs");
    let purchase = cardvm::asm::assemble_file(&p, &Default::default())
        .expect("purchase_host.cvs")
        .script
        .encode();
    c.ledger
        .set_script(CITY, "purchase", &purchase)
        .await
        .expect("purchase script");

    let (notify_url, notes) = notification_endpoint().await;
    let shop_key = Sm2PrivateKey::generate(&mut os_rng());
    let cafe_key = Sm2PrivateKey::generate(&mut os_rng());
    for (id, name, key, url, enabled) in [
        ("shop", "Corner Shop", &shop_key, Some(notify_url), true),
        ("cafe", "Cafe", &cafe_key, None, false),
    ] {
        c.ledger
            .set_merchant(&MerchantRow {
                merchant_id: id.into(),
                name: name.into(),
                fee_bp: 60,
                account: format!("bank {id}"),
                public_key: to_hex(&key.public_key().to_sec1_bytes()),
                notify_url: url,
                enabled,
                added_at: now(),
            })
            .await
            .expect("merchant");
    }

    let log: Log = Arc::default();
    let proxy = recording_proxy(&c.services[0].url(), &c.tls_ca, log.clone()).await;
    let client = c.client_for(0, &proxy);
    let (mut reader, _) = c.reader(0);
    let (reader_id, reader_key) = (c.readers[0].0.clone(), c.readers[0].1.clone());
    let merchant = |id: &str, key: &Sm2PrivateKey| {
        MerchantClient::new(&proxy, None, id, key.clone(), Duration::from_secs(20))
            .expect("merchant client")
    };
    let (shop, cafe) = (merchant("shop", &shop_key), merchant("cafe", &cafe_key));
    let raw = Raw {
        http: reqwest::Client::builder().build().expect("http"),
        base: proxy.clone(),
    };

    // The unauthenticated GETs.
    assert_eq!(
        raw.send(reqwest::Method::GET, "/v1/health", &[], vec![])
            .await
            .0,
        200
    );
    assert_eq!(
        raw.send(reqwest::Method::GET, "/metrics", &[], vec![])
            .await
            .0,
        200
    );

    // A load torn mid-write (unknown), then the client's recharge: the card's recovery
    // bundle first (`recovers_seq`, `decided_*` set), then its load.
    let mut loaded = card(0, 500);
    let q = query(&client, &mut reader, &mut loaded).await;
    let torn_bundle = client
        .start(&new_request_id(), &q.to_json(), 1_000)
        .await
        .expect("load bundle");
    let at = loaded.apdu_index() + 4;
    loaded.faults_mut().push(cardvm::sim::Fault::TearAfter(at));
    let torn = tokio::task::block_in_place(|| {
        run_bundle(
            &client,
            &mut reader,
            &mut loaded,
            torn_bundle.seq,
            &from_hex(&torn_bundle.command).expect("hex"),
            &from_hex(&torn_bundle.data).expect("hex"),
            &mut NoTrace,
        )
    })
    .expect("run")
    .receipt;
    assert!(
        matches!(torn.outcome, Outcome::Unknown { .. }),
        "{:?}",
        torn.outcome
    );
    client
        .complete(&new_request_id(), &torn.to_json())
        .await
        .expect("unknown settles as unknown");
    cardvm::transport::CardTransport::power_on(&mut loaded).expect("card back on the reader");
    let out = recharge(&client, &mut reader, &mut loaded, CITY, 1_000, |_| {})
        .await
        .expect("recharge");
    assert_eq!(out.outcome, "committed");
    assert_eq!(out.recovered.len(), 1, "a recovery ran first: {out:?}");
    assert!(out.recovered[0].decided_seq.is_some(), "{out:?}");
    client.status(torn_bundle.seq).await.expect("status");

    // The journal: a query receipt, a settled load's receipt again, a broken one.
    let j = client
        .journal(
            &new_request_id(),
            vec![
                JournalItem {
                    journal_seq: 1,
                    receipt: q.to_json(),
                },
                JournalItem {
                    journal_seq: 2,
                    receipt: out.receipt.clone(),
                },
                JournalItem {
                    journal_seq: 3,
                    receipt: "not a receipt".into(),
                },
            ],
        )
        .await
        .expect("journal");
    let statuses: Vec<&str> = j.results.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["query", "settled", "refused"]);
    assert_eq!(j.acknowledged_up_to, 3);

    // A merchant's order, paid from the card, queried, refunded; another cancelled.
    let o1 = shop
        .create_order("A-1001", 2_500, "Two notebooks", Some(600))
        .await
        .expect("order");
    let by_number: OrderReply = shop
        .post(
            "/v1/merchant/orders/query",
            &OrderRequest {
                request_id: new_request_id(),
                order_id: None,
                merchant_order: Some("A-1001".into()),
            },
        )
        .await
        .expect("query by number");
    assert_eq!(by_number.order_id, o1.order_id);
    let mut payer = card_731(1, 10_000);
    let paid = pay_order(&client, &mut reader, &mut payer, CITY, &o1.order_id, |_| {})
        .await
        .expect("pay");
    assert_eq!(paid.outcome, "committed");
    let o1_paid = shop.order(&o1.order_id).await.expect("query");
    assert_eq!(o1_paid.state, "paid");
    assert!(
        o1_paid.card.is_some() && o1_paid.fee == Some(15),
        "{o1_paid:?}"
    );
    // Its notification, before the refund changes what is owed (checked below).
    let deadline = Instant::now() + Duration::from_secs(30);
    while notes.lock().expect("lock").is_empty() {
        assert!(Instant::now() < deadline, "no notification within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        shop.refund(&o1.order_id, "out of stock")
            .await
            .expect("refund")
            .state,
        "refunded"
    );
    let o2 = shop
        .create_order("A-1002", 100, "A pen", None)
        .await
        .expect("order");
    for _ in 0..2 {
        // Cancelling a cancelled order answers it again.
        assert_eq!(
            shop.cancel(&o2.order_id).await.expect("cancel").state,
            "cancelled"
        );
    }

    // Refusals, each with the status and code the document gives it.
    let stranger = Client::new(
        &proxy,
        None,
        &reader_id,
        Sm2PrivateKey::generate(&mut os_rng()),
        Duration::from_secs(20),
    )
    .expect("client");
    assert_eq!(
        refused(stranger.status(1).await),
        (401, "unauthenticated".into())
    );
    assert_eq!(
        refused(merchant("shop", &cafe_key).order(&o1.order_id).await),
        (401, "unauthenticated".into())
    );
    let signer = (reader_id.as_str(), &reader_key);
    let status_body = serde_json::to_vec(&StatusRequest {
        request_id: new_request_id(),
        seq: 1,
    })
    .expect("json");
    assert_eq!(
        code(
            &raw.signed("/v1/status", signer, now() - 1_000, &status_body)
                .await
        ),
        (401, "clock_skew")
    );
    assert_eq!(
        code(&raw.signed("/v1/status", signer, now(), b"{").await),
        (400, "bad_json")
    );
    let big = vec![b' '; MAX_BODY + 1];
    assert_eq!(
        code(&raw.signed("/v1/status", signer, now(), &big).await),
        (413, "bad_body")
    );
    assert_eq!(
        code(&raw.signed("/v1/nothing-here", signer, now(), b"{}").await),
        (404, "not_found")
    );
    let wrong_method = raw
        .send(reqwest::Method::GET, "/v1/status", &[], vec![])
        .await;
    assert_eq!(wrong_method, (405, vec![]), "GET on a POST route");
    assert_eq!(
        refused(
            client
                .post::<_, Value>("/v1/status", &json!({"request_id": "a b", "seq": 1}))
                .await
        ),
        (400, "bad_request_id".into())
    );
    assert_eq!(
        refused(client.status(999_999).await),
        (404, "no_bundle".into())
    );
    assert_eq!(
        refused(client.query_script(999).await),
        (404, "unknown_city".into())
    );
    assert_eq!(
        refused(client.terminal_script(CITY).await),
        (403, "not_a_terminal".into())
    );
    // The same reader as the shop's PSAM terminal gets city 755's terminal program.
    c.ledger
        .set_city(&cardvm::issuer::ledger::CityRow {
            city: 755,
            alg: "sm4".into(),
            purse_limit: 100_000,
            txn_limit: 100_000,
            day_limit: 200_000,
        })
        .await
        .expect("city");
    let terminal = cardvm::asm::assemble_file(
        &repo("scripts/city0755-sm4/psam_purchase.cvs"),
        &Default::default(),
    )
    .expect("psam_purchase.cvs")
    .script
    .encode();
    c.ledger
        .set_terminal_program(755, &terminal, now())
        .await
        .expect("terminal program");
    c.ledger
        .set_reader_merchant(&reader_id, Some("shop"))
        .await
        .expect("terminal");
    client.terminal_script(755).await.expect("terminal program");
    c.ledger
        .set_reader_merchant(&reader_id, None)
        .await
        .expect("not a terminal");
    assert_eq!(
        refused(client.order("O00000000000000000000").await),
        (404, "unknown_order".into())
    );
    assert_eq!(
        refused(shop.order("O00000000000000000000").await),
        (404, "unknown_order".into())
    );
    assert_eq!(
        refused(
            client
                .post::<_, Value>("/v1/order", &json!({"request_id": new_request_id()}))
                .await
        ),
        (400, "bad_order".into())
    );
    assert_eq!(
        refused(
            shop.post::<_, Value>(
                "/v1/merchant/orders/query",
                &OrderRequest {
                    request_id: new_request_id(),
                    order_id: Some(o1.order_id.clone()),
                    merchant_order: Some("A-1001".into()),
                },
            )
            .await
        ),
        (400, "bad_order".into())
    );
    assert_eq!(
        refused(
            client
                .post::<_, Value>(
                    "/v1/host",
                    &HostRequest {
                        request_id: new_request_id(),
                        seq: torn_bundle.seq,
                        apdu: "ZZ".into(),
                    },
                )
                .await
        ),
        (400, "bad_apdu".into())
    );
    assert_eq!(
        refused(client.complete(&new_request_id(), "garbage").await),
        (400, "bad_receipt".into())
    );
    assert_eq!(
        refused(
            client
                .journal(
                    &new_request_id(),
                    vec![
                        JournalItem {
                            journal_seq: 2,
                            receipt: "x".into()
                        },
                        JournalItem {
                            journal_seq: 1,
                            receipt: "x".into()
                        },
                    ],
                )
                .await
        ),
        (400, "bad_batch".into())
    );
    let reused = new_request_id();
    for (city, expected) in [(CITY, None), (CITY + 1, Some((409, "request_id_reused")))] {
        let r: Result<SealedReply, _> = client
            .post(
                "/v1/query-script",
                &QueryScriptRequest {
                    request_id: reused.clone(),
                    city,
                },
            )
            .await;
        match expected {
            None => {
                r.expect("query script");
            }
            Some((s, c)) => assert_eq!(refused(r), (s, c.into())),
        }
    }
    assert_eq!(
        refused(
            shop.create_order("A-1001", 9_999, "Two notebooks", None)
                .await
        ),
        (409, "order_exists".into())
    );
    assert_eq!(
        refused(shop.refund(&o2.order_id, "never paid").await),
        (409, "order_not_payable".into())
    );
    assert_eq!(
        refused(shop.cancel(&o1.order_id).await),
        (409, "order_not_payable".into())
    );
    assert_eq!(
        refused(cafe.create_order("C-1", 100, "tea", None).await),
        (403, "merchant_disabled".into())
    );
    let q = query(&client, &mut reader, &mut loaded).await;
    assert_eq!(
        refused(
            client
                .start(&new_request_id(), &q.to_json(), 2_000_000)
                .await
        ),
        (422, "limit".into())
    );

    // The notification the shop received for its paid order.
    let hook = &doc["webhooks"]["orderPaid"]["post"];
    for (path, headers, body) in notes.lock().expect("lock").iter() {
        let v: Value = serde_json::from_slice(body).expect("notification JSON");
        schemas
            .check(
                &hook["requestBody"]["content"]["application/json"]["schema"],
                &v,
            )
            .unwrap_or_else(|e| panic!("notification {v}: {e}"));
        for param in hook["parameters"].as_array().expect("parameters") {
            let name = param["name"].as_str().expect("name");
            let value = headers
                .get(name)
                .unwrap_or_else(|| panic!("notification without header {name}"));
            schemas
                .check(&param["schema"], &json!(value))
                .unwrap_or_else(|e| panic!("header {name}: {e}"));
        }
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        let n = verify_notification(
            c.issuer_key.public_key(),
            "shop",
            path,
            &headers[HDR_TIME],
            &headers[HDR_SIGNATURE],
            body,
            now(),
        )
        .expect("the notification verifies as documented");
        assert_eq!(n.order_id, o1.order_id);
    }

    // A recharge paid first: the reader's order, the provider's signed notification.
    let bank_key = Sm2PrivateKey::generate(&mut os_rng());
    c.ledger
        .set_provider(&cardvm::issuer::payment::ProviderRow {
            provider_id: "bank".into(),
            name: "Bank".into(),
            alg: cardvm::issuer::payment::ProviderAlg::Sm2,
            public_key: to_hex(&bank_key.public_key().to_sec1_bytes()),
            enabled: true,
            added_at: now(),
        })
        .await
        .expect("provider");
    let provider_post = |body: Vec<u8>| {
        let raw = &raw;
        let bank_key = &bank_key;
        async move {
            let time = now();
            let sig = bank_key
                .sign(&mut os_rng(), &provider_signing_input("bank", time, &body))
                .expect("sign");
            raw.send(
                reqwest::Method::POST,
                "/v1/provider/notify",
                &[
                    (HDR_PROVIDER, "bank".to_string()),
                    (HDR_TIME, time.to_string()),
                    (HDR_SIGNATURE, to_hex(&sig)),
                    ("content-type", "application/json".to_string()),
                ],
                body,
            )
            .await
        }
    };
    let ro = client
        .recharge_order(CITY, "4100000089999985", 10_000, "bank")
        .await
        .expect("recharge order");
    assert_eq!(ro.state, "unpaid");
    let (status, ack) = provider_post(
        serde_json::to_vec(&ProviderNotification {
            order_id: ro.order_id.clone(),
            amount: 10_000,
            provider_ref: "B-1".into(),
            status: "paid".into(),
        })
        .expect("json"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&ack));
    assert_eq!(
        client
            .recharge_order_state(&ro.order_id)
            .await
            .expect("state")
            .state,
        "paid"
    );

    // Every documented request schema varied field by field from a body the service
    // accepted. A body the document rejects must be refused 400; one it accepts (a field
    // it says is optional, left out) must be read by the service as its JSON.
    let accepted: BTreeMap<String, Value> = log
        .lock()
        .expect("lock")
        .iter()
        .filter(|e| e.method == "POST" && e.status == 200)
        .map(|e| {
            (
                e.path.clone(),
                serde_json::from_slice(&e.request).expect("request JSON"),
            )
        })
        .collect();
    let mut variants_sent = 0;
    for ((path, _), op) in operations(&doc) {
        let Some(schema) = request_schema(&op) else {
            continue;
        };
        let base = accepted
            .get(&path)
            .unwrap_or_else(|| panic!("{path}: no request was accepted to vary"));
        for (what, change, mut body) in variants(&doc, schema, base) {
            // A fresh id: the base's is stored with its own body (409 for any other).
            if body.get("request_id").is_some_and(Value::is_string) {
                body["request_id"] = json!(new_request_id());
            }
            let documented = requests.check(schema, &body).is_ok();
            assert!(
                !(documented && change == Change::Broken),
                "{path}: the document accepts a body {what}: {body}"
            );
            let r: Result<Value, ClientError> = if path.starts_with("/v1/merchant/") {
                shop.post(&path, &body).await
            } else if path == "/v1/provider/notify" {
                let (status, bytes) = provider_post(serde_json::to_vec(&body).expect("json")).await;
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if status == 200 {
                    Ok(v)
                } else {
                    Err(ClientError::Refused {
                        url: path.clone(),
                        status,
                        code: v["code"].as_str().unwrap_or_default().to_string(),
                        error: v["error"].as_str().unwrap_or_default().to_string(),
                    })
                }
            } else {
                client.post(&path, &body).await
            };
            match (documented, r) {
                (true, Err(ClientError::Refused { status, code, .. })) => assert!(
                    code != "bad_json",
                    "{path}: the document allows a body {what}, the service answers {status} {code}"
                ),
                (true, _) => {}
                (false, r) => {
                    let (status, code) = refused(r);
                    assert_eq!(status, 400, "{path}: a body {what} was answered {code}");
                }
            }
            variants_sent += 1;
        }
    }

    // Everything that went over the wire, against the document.
    let exchanges = log.lock().expect("lock").clone();
    let mut failures = Vec::new();
    for ex in &exchanges {
        if let Err(e) = check_exchange(&doc, &schemas, &requests, ex) {
            failures.push(format!(
                "{} {} → {}: {e}\n  request: {}\n  answer: {}",
                ex.method,
                ex.path,
                ex.status,
                String::from_utf8_lossy(&ex.request)
                    .chars()
                    .take(300)
                    .collect::<String>(),
                String::from_utf8_lossy(&ex.response)
                    .chars()
                    .take(300)
                    .collect::<String>(),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} exchanges disagree with docs/openapi.json:\n{}",
        failures.len(),
        exchanges.len(),
        failures.join("\n")
    );
    // Every documented operation was answered 200 at least once.
    for (path, method) in operations(&doc).keys() {
        assert!(
            exchanges.iter().any(|e| &e.path == path
                && e.method.eq_ignore_ascii_case(method)
                && e.status == 200),
            "{method} {path}: never answered 200 here"
        );
    }
    eprintln!(
        "openapi: {} exchanges ({} refusals, {variants_sent} varied bodies) match docs/openapi.json, {:.1} s",
        exchanges.len(),
        exchanges.iter().filter(|e| e.status != 200).count(),
        started.elapsed().as_secs_f64()
    );
    c.shutdown().await;
}
