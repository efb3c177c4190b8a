//! Recharges paid first (`docs/clearing.md`): a reader creates a recharge order, the
//! cardholder pays it at a payment provider, and the provider's signed notification
//! marks it paid (`/v1/provider/notify`). The load then presents it
//! (`/v1/recharge/start` with `order_id`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Refusal, Service};
use crate::issuer::IssuerError;
use crate::issuer::merchant::valid_id;
use crate::issuer::payment::{PaymentRecorded, RechargeOrderRow};
use crate::online::protocol::*;

/// How long a recharge order waits for its payment and its load (seconds).
const RECHARGE_ORDER_LIFE: u64 = 86_400;

fn reply(o: &RechargeOrderRow, now: u64) -> RechargeOrderReply {
    RechargeOrderReply {
        order_id: o.order_id.clone(),
        city: o.city,
        card_id: o.card_id.clone(),
        amount: o.amount,
        amount_display: yuan(o.amount),
        provider_id: o.provider_id.clone(),
        state: o.state(now).name().into(),
        expires_at: o.expires_at,
        paid_at: o.paid_at,
    }
}

/// `POST /v1/recharge/order` (a reader): a recharge order to pay at a provider.
pub(super) async fn create(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/recharge/order",
        headers,
        body,
        true,
        |svc, _caller, req: RechargeOrderRequest| async move {
            let bad = |e: String| Refusal::new(StatusCode::BAD_REQUEST, "bad_order", e);
            let card = from_hex(&req.card_id)
                .filter(|c| (1..=16).contains(&c.len()))
                .ok_or_else(|| bad("card_id: 1-16 bytes of hex".into()))?;
            let ledger = svc.issuer.ledger();
            let city = ledger
                .city(req.city)
                .await
                .map_err(IssuerError::from)?
                .ok_or_else(|| {
                    Refusal::new(
                        StatusCode::NOT_FOUND,
                        "unknown_city",
                        format!("city {} is not served here", req.city),
                    )
                })?;
            if req.amount == 0 || req.amount > city.txn_limit {
                return Err(Refusal::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "limit",
                    format!(
                        "amount {}: 1 to {} fen (the city's per-load limit)",
                        req.amount, city.txn_limit
                    ),
                ));
            }
            let provider = ledger
                .provider(&req.provider_id)
                .await
                .map_err(IssuerError::from)?
                .filter(|p| p.enabled)
                .ok_or_else(|| {
                    Refusal::new(
                        StatusCode::NOT_FOUND,
                        "unknown_provider",
                        format!("payment provider `{}` is not available", req.provider_id),
                    )
                })?;
            let mut id = [0u8; 10];
            rand_core::Rng::fill_bytes(&mut crate::crypto::rng::os_rng(), &mut id);
            let now = svc.issuer.now();
            let o = ledger
                .create_recharge_order(
                    &format!("P{}", to_hex(&id)),
                    req.city,
                    &to_hex(&card),
                    req.amount,
                    &provider.provider_id,
                    now,
                    now.saturating_add(RECHARGE_ORDER_LIFE),
                )
                .await
                .map_err(IssuerError::from)?;
            Ok(reply(&o, now))
        },
    )
    .await
}

/// `POST /v1/recharge/order/query` (a reader): where a recharge order stands.
pub(super) async fn query(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/recharge/order/query",
        headers,
        body,
        false,
        |svc, _caller, req: OrderRequest| async move {
            let id = req.order_id.ok_or_else(|| {
                Refusal::new(StatusCode::BAD_REQUEST, "bad_order", "order_id: required")
            })?;
            let o = svc
                .issuer
                .ledger()
                .recharge_order(&id)
                .await
                .map_err(IssuerError::from)?
                .ok_or_else(|| IssuerError::UnknownOrder(id.clone()))?;
            Ok(reply(&o, svc.issuer.now()))
        },
    )
    .await
}

/// `POST /v1/provider/notify`: a provider's signed payment notification.
pub(super) async fn notify(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let mut who = None;
    let r = notify_inner(&svc, &headers, body, &mut who).await;
    match r {
        Ok(ack) => {
            svc.log(
                "/v1/provider/notify",
                who.as_deref(),
                None,
                StatusCode::OK,
                started,
                &ack.result,
            );
            (StatusCode::OK, axum::Json(ack)).into_response()
        }
        Err(refusal) => {
            svc.log(
                "/v1/provider/notify",
                who.as_deref(),
                None,
                refusal.status,
                started,
                refusal.code,
            );
            refusal.into_response()
        }
    }
}

async fn notify_inner(
    svc: &Service,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    who: &mut Option<String>,
) -> Result<ProviderAck, Refusal> {
    let body = body.map_err(|e| Refusal::new(e.status(), "bad_body", e.body_text()))?;
    super::too_large(&body)?;
    let provider_id = Service::header(headers, HDR_PROVIDER)?.to_string();
    let unauthenticated = |e: String| Refusal::new(StatusCode::UNAUTHORIZED, "unauthenticated", e);
    let time: u64 = Service::header(headers, HDR_TIME)?
        .parse()
        .map_err(|_| unauthenticated(format!("{HDR_TIME}: not unix seconds")))?;
    let sig = from_hex(Service::header(headers, HDR_SIGNATURE)?)
        .filter(|s| !s.is_empty() && s.len() <= 1024)
        .ok_or_else(|| unauthenticated(format!("{HDR_SIGNATURE}: not hex")))?;
    let now = svc.issuer.now();
    if now.abs_diff(time) > MAX_CLOCK_SKEW {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "clock_skew",
            format!(
                "provider `{provider_id}` clock is {} s off the service's (at most {MAX_CLOCK_SKEW} s)",
                now.abs_diff(time)
            ),
        ));
    }
    let bad_signature = || {
        unauthenticated(format!(
            "notification signature of provider `{provider_id}` does not verify (or no such provider is registered)"
        ))
    };
    if !valid_id(&provider_id) {
        return Err(bad_signature());
    }
    let ledger = svc.issuer.ledger();
    let provider = ledger
        .provider(&provider_id)
        .await
        .map_err(IssuerError::from)?
        .filter(|p| p.enabled)
        .ok_or_else(bad_signature)?;
    provider
        .alg
        .verify(
            &provider.public_key,
            &provider_signing_input(&provider_id, time, &body),
            &sig,
        )
        .map_err(|_| bad_signature())?;
    *who = Some(format!("provider:{provider_id}"));
    svc.rate_limit(&format!("provider:{provider_id}"))?;
    let n: ProviderNotification = serde_json::from_slice(&body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("request body: {e}"),
        )
    })?;
    if n.status != "paid" {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_notification",
            format!("status `{}`: only `paid` is notified", n.status),
        ));
    }
    if n.provider_ref.is_empty() || n.provider_ref.len() > 64 {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_notification",
            "provider_ref: 1-64 characters",
        ));
    }
    let recorded = ledger
        .record_payment(&n.order_id, &provider_id, n.amount, &n.provider_ref, now)
        .await
        .map_err(IssuerError::from)?;
    let result = match recorded {
        PaymentRecorded::Now => "recorded",
        PaymentRecorded::Already => "already",
        PaymentRecorded::NoOrder => {
            return Err(IssuerError::UnknownOrder(n.order_id).into());
        }
        PaymentRecorded::OtherPayment => {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                "other_payment",
                format!(
                    "order {} was paid under another reference (or `{}` paid another order)",
                    n.order_id, n.provider_ref
                ),
            ));
        }
    };
    let o = ledger
        .recharge_order(&n.order_id)
        .await
        .map_err(IssuerError::from)?
        .ok_or_else(|| IssuerError::UnknownOrder(n.order_id.clone()))?;
    Ok(ProviderAck {
        order_id: o.order_id.clone(),
        result: result.into(),
        state: o.state(now).name().into(),
    })
}
