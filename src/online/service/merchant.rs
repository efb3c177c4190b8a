//! The merchant API (`/v1/merchant/…`, signed by the merchant's key) and the reader's
//! look at an order before paying it (`/v1/order`). See `docs/clearing.md`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::{Caller, Refusal, Service, Signer};
use crate::issuer::IssuerError;
use crate::issuer::merchant::{
    MerchantRow, NewOrder, OrderCreated, OrderRow, OrderState, valid_id,
};
use crate::online::protocol::*;

/// Default and bounds of an order's life (seconds).
const DEFAULT_EXPIRY: u64 = 900;
const MIN_EXPIRY: u64 = 60;
const MAX_EXPIRY: u64 = 7 * 86_400;
/// The longest description and refund reason (characters).
const MAX_TEXT: usize = 200;

fn bad(code: &'static str, error: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, code, error)
}

/// The fee on an order: `amount × fee_bp / 10 000` fen, rounded half up (the rule the
/// clearing uses too: [`crate::issuer::clearing::fee`]).
fn fee(o: &OrderRow) -> u64 {
    crate::issuer::clearing::fee(o.amount, o.fee_bp)
}

fn reply(o: &OrderRow, m: &MerchantRow, now: u64, for_merchant: bool) -> OrderReply {
    OrderReply {
        order_id: o.order_id.clone(),
        merchant_id: o.merchant_id.clone(),
        merchant_name: m.name.clone(),
        merchant_order: o.merchant_order.clone(),
        amount: o.amount,
        amount_display: yuan(o.amount),
        description: o.description.clone(),
        state: o.state(now).name().into(),
        created_at: o.created_at,
        expires_at: o.expires_at,
        paid_at: o.paid_at,
        card: if for_merchant {
            o.card_id.as_deref().map(mask_card)
        } else {
            None
        },
        refunded_at: o.refunded_at,
        fee: for_merchant.then(|| fee(o)),
    }
}

fn merchant_of(caller: &Caller) -> Result<&MerchantRow, Refusal> {
    caller.merchant.as_ref().ok_or_else(|| {
        Refusal::new(
            StatusCode::FORBIDDEN,
            "not_a_merchant",
            "this endpoint is for merchants",
        )
    })
}

/// The caller's order, by the card company's id or its own order number. Another
/// merchant's order is answered as missing (its existence is not disclosed).
async fn own_order(
    svc: &Service,
    m: &MerchantRow,
    req: &OrderRequest,
) -> Result<OrderRow, Refusal> {
    let ledger = svc.issuer.ledger();
    let found = match (&req.order_id, &req.merchant_order) {
        (Some(id), None) => ledger.order(id).await.map_err(IssuerError::from)?,
        (None, Some(n)) => ledger
            .order_by_merchant(&m.merchant_id, n)
            .await
            .map_err(IssuerError::from)?,
        _ => {
            return Err(bad(
                "bad_order",
                "give exactly one of order_id and merchant_order",
            ));
        }
    };
    let what = req
        .order_id
        .clone()
        .or_else(|| req.merchant_order.clone())
        .unwrap_or_default();
    found
        .filter(|o| o.merchant_id == m.merchant_id)
        .ok_or_else(|| IssuerError::UnknownOrder(what).into())
}

/// `POST /v1/merchant/orders`.
pub(super) async fn create(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed_by(
        Signer::Merchant,
        "/v1/merchant/orders",
        headers,
        body,
        true,
        |svc, caller, req: CreateOrderRequest| async move {
            let m = merchant_of(&caller)?;
            if !valid_id(&req.merchant_order) {
                return Err(bad(
                    "bad_order",
                    "merchant_order: 1-32 of A-Z a-z 0-9 - _ .",
                ));
            }
            if req.amount == 0 {
                return Err(bad("bad_order", "amount: at least 1 fen"));
            }
            if req.description.chars().count() > MAX_TEXT || req.description.trim().is_empty() {
                return Err(bad(
                    "bad_order",
                    format!("description: 1-{MAX_TEXT} characters"),
                ));
            }
            let life = req.expires_in.unwrap_or(DEFAULT_EXPIRY);
            if !(MIN_EXPIRY..=MAX_EXPIRY).contains(&life) {
                return Err(bad(
                    "bad_order",
                    format!("expires_in: {MIN_EXPIRY}..={MAX_EXPIRY} seconds"),
                ));
            }
            let now = svc.issuer.now();
            let mut id = [0u8; 10];
            rand_core::Rng::fill_bytes(&mut crate::crypto::rng::os_rng(), &mut id);
            let order_id = format!("O{}", to_hex(&id));
            let created = svc
                .issuer
                .ledger()
                .create_order(&NewOrder {
                    order_id,
                    merchant_id: m.merchant_id.clone(),
                    merchant_order: req.merchant_order.clone(),
                    amount: req.amount,
                    description: req.description.clone(),
                    created_at: now,
                    expires_at: now.saturating_add(life),
                })
                .await
                .map_err(IssuerError::from)?;
            match created {
                OrderCreated::Now(o) | OrderCreated::Already(o) => Ok(reply(&o, m, now, true)),
                OrderCreated::Different(o) => Err(Refusal::new(
                    StatusCode::CONFLICT,
                    "order_exists",
                    format!(
                        "merchant_order {} is order {} for {} fen (`{}`): a new order needs a new number",
                        o.merchant_order, o.order_id, o.amount, o.description
                    ),
                )),
                OrderCreated::NoMerchant => Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "merchant_disabled",
                    format!("merchant `{}` is disabled", m.merchant_id),
                )),
            }
        },
    )
    .await
}

/// `POST /v1/merchant/orders/query` (answered fresh every time).
pub(super) async fn query(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed_by(
        Signer::Merchant,
        "/v1/merchant/orders/query",
        headers,
        body,
        false,
        |svc, caller, req: OrderRequest| async move {
            let m = merchant_of(&caller)?;
            let o = own_order(&svc, m, &req).await?;
            Ok(reply(&o, m, svc.issuer.now(), true))
        },
    )
    .await
}

/// `POST /v1/merchant/orders/cancel`: an order no payment holds.
pub(super) async fn cancel(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed_by(
        Signer::Merchant,
        "/v1/merchant/orders/cancel",
        headers,
        body,
        true,
        |svc, caller, req: OrderRequest| async move {
            let m = merchant_of(&caller)?;
            let o = own_order(&svc, m, &req).await?;
            let now = svc.issuer.now();
            let ledger = svc.issuer.ledger();
            if !ledger
                .cancel_order(&o.order_id, now)
                .await
                .map_err(IssuerError::from)?
            {
                let state = ledger
                    .order(&o.order_id)
                    .await
                    .map_err(IssuerError::from)?
                    .map_or(o.state(now), |o| o.state(now));
                if state != OrderState::Cancelled {
                    return Err(IssuerError::Order {
                        order: o.order_id.clone(),
                        detail: format!("it is {}: only an open order is cancelled", state.name()),
                    }
                    .into());
                }
            }
            let o = ledger
                .order(&o.order_id)
                .await
                .map_err(IssuerError::from)?
                .ok_or_else(|| IssuerError::UnknownOrder(o.order_id.clone()))?;
            Ok(reply(&o, m, now, true))
        },
    )
    .await
}

/// `POST /v1/merchant/orders/refund`: a paid order, in full.
pub(super) async fn refund(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed_by(
        Signer::Merchant,
        "/v1/merchant/orders/refund",
        headers,
        body,
        true,
        |svc, caller, req: RefundRequest| async move {
            let m = merchant_of(&caller)?;
            if req.reason.chars().count() > MAX_TEXT || req.reason.trim().is_empty() {
                return Err(bad("bad_order", format!("reason: 1-{MAX_TEXT} characters")));
            }
            let lookup = OrderRequest {
                request_id: req.request_id.clone(),
                order_id: Some(req.order_id.clone()),
                merchant_order: None,
            };
            let o = own_order(&svc, m, &lookup).await?;
            let now = svc.issuer.now();
            let ledger = svc.issuer.ledger();
            if !ledger
                .refund_order(&o.order_id, now, &req.reason)
                .await
                .map_err(IssuerError::from)?
            {
                return Err(IssuerError::Order {
                    order: o.order_id.clone(),
                    detail: format!(
                        "it is {}: only a paid order is refunded",
                        o.state(now).name()
                    ),
                }
                .into());
            }
            let o = ledger
                .order(&o.order_id)
                .await
                .map_err(IssuerError::from)?
                .ok_or_else(|| IssuerError::UnknownOrder(o.order_id.clone()))?;
            Ok(reply(&o, m, now, true))
        },
    )
    .await
}

/// `POST /v1/order`: a reader shows the cardholder what an order is before paying it
/// (answered fresh every time; no card data).
pub(super) async fn order_for_payment(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/order",
        headers,
        body,
        false,
        |svc, _caller, req: OrderRequest| async move {
            let id = req
                .order_id
                .ok_or_else(|| bad("bad_order", "order_id: required"))?;
            let ledger = svc.issuer.ledger();
            let o = ledger
                .order(&id)
                .await
                .map_err(IssuerError::from)?
                .ok_or_else(|| IssuerError::UnknownOrder(id.clone()))?;
            let m = ledger
                .merchant(&o.merchant_id)
                .await
                .map_err(IssuerError::from)?
                .ok_or_else(|| IssuerError::UnknownOrder(id.clone()))?;
            Ok(reply(&o, &m, svc.issuer.now(), false))
        },
    )
    .await
}
