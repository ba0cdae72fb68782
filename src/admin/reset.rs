//! `POST /reset?limit=NAME&key=K`: refills one key's bucket or quota on every node (see
//! [`crate::limit::store_reset`]). In shared mode the bucket is first read from Redis, so that
//! the credit covers what every node has spent; the credit reaches the other nodes with this
//! node's next sync (it is woken for it). Each reset is logged with the key's fingerprint,
//! never the key.

use super::json_response;
use crate::app::node::Node;
use crate::config::LimitId;
use crate::limit::overrides::ForKey;
use crate::limit::store::store_key;
use crate::limit::window::WindowAt;
use crate::request::key::Fingerprint;
use crate::shared::load_key::load_key;
use crate::shared::{conn, layout, resets};
use http::Response;
use serde_json::json;

pub(super) async fn reset(node: &Node, li: LimitId, key: &str) -> Response<Vec<u8>> {
    let rt = node.runtime();
    let base = rt.limit_spec(li);
    let limit = match base.for_key(key) {
        ForKey::Bucket(l) => l,
        ForKey::Own(o) => &o.spec,
        ForKey::Unlimited | ForKey::Deny => {
            let error = "the key has no bucket to reset: its override is unlimited or deny";
            return json_response(409, &json!({ "error": error, "limit": base.name }));
        }
    };
    if rt.config.redis.is_some() {
        if let Err(e) = load_key(node, &limit.name, key).await {
            let error = format!("cannot read the bucket from Redis ({e}); nothing was reset");
            return json_response(503, &json!({ "error": error }));
        }
    }
    let r = node.store.reset(limit, key);
    if let (Some(cfg), true) = (rt.config.redis.as_ref(), r.credited > 0) {
        // Written and announced now, so that every node reads it at its next sync; should
        // this fail, the credit still goes with this node's next sync of the bucket.
        let now_ms = u64::try_from(node.store.now_ns() / 1_000_000).unwrap_or(0);
        let redis_key = layout::redis_key(&cfg.key_prefix, &limit.name, key);
        let ttl = limit.params.state_ttl_ms(cfg.sync_interval);
        let store_key = store_key(&limit.name, key);
        // A quota's credit is of the window the reset was made in.
        let window = limit
            .params
            .window()
            .zip(r.window)
            .map(|(window, index)| WindowAt { window, index });
        let announce = async {
            let mut con = conn::open(cfg).await.map_err(|e| e.to_string())?;
            let node_id = rt.config.node_id.as_str();
            resets::announce(
                &mut con,
                &cfg.key_prefix,
                (&redis_key, ttl),
                (node_id, r.own_credit, window.as_ref()),
                (&store_key, now_ms),
            )
            .await
            .map_err(|e| e.to_string())
        };
        if let Err(e) = tokio::time::timeout(cfg.timeout * 2, announce)
            .await
            .unwrap_or(Err("timed out".into()))
        {
            tracing::warn!(error = %e, "reset not announced: the other nodes see it at their next sync of the bucket");
        }
    }
    tracing::info!(
        limit = %limit.name,
        key_fp = %Fingerprint::of(key),
        credited = r.credited,
        "bucket reset by the admin API"
    );
    json_response(
        200,
        &json!({
            "limit": limit.name,
            "key": key,
            "credited": r.credited,
            "remaining": r.remaining,
            "capacity": limit.params.capacity(),
        }),
    )
}
