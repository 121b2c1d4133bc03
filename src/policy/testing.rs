//! Run one hook from the command line (`sluice test-script`): build a
//! [`HookInput`] from a JSON envelope and an optional message, run it through
//! a real engine, and show the outcome as JSON.
//!
//! Envelope JSON (every key optional):
//!
//! ```json
//! {
//!   "connection": {"remoteip": "192.0.2.1", "helo": {"verb": "EHLO", "host": "x"}},
//!   "sender": "a@example.com",
//!   "recipients": ["b@example.org", {"recipient": "c@example.org", "transportid": "lmtp"}],
//!   "arguments": {"sender": "...", "recipient": "...", "params": {"SIZE": "10"},
//!                 "command": "XFOO",
//!                 "verb": "EHLO", "host": "x", "mechanism": "PLAIN",
//!                 "username": "u", "password": "p"},
//!   "delivery": {"recipient": "...", "attempt": 2, "result": {"code": 451, "text": "..."}},
//!   "context": {}
//! }
//! ```

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{
    DeliveryInfo, Hook, HookArguments, HookInput, HookOutcome, HookVerdict, PolicyEngine,
    PolicyError,
};
use crate::config::Config;
use crate::envelope::{Address, ConnectionInfo, RecipientInfo, TransactionInfo};

fn overlay<T: serde::Serialize + serde::de::DeserializeOwned>(
    base: T,
    over: Option<&Value>,
    what: &str,
) -> Result<T, PolicyError> {
    let Some(Value::Object(over)) = over else {
        return Ok(base);
    };
    let mut v = serde_json::to_value(base).map_err(|e| PolicyError::Input(e.to_string()))?;
    if let Value::Object(m) = &mut v {
        for (k, val) in over {
            m.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).map_err(|e| PolicyError::Input(format!("{what}: {e}")))
}

fn str_of(v: &Map<String, Value>, key: &str) -> Option<String> {
    v.get(key).and_then(|x| x.as_str()).map(|s| s.to_string())
}

fn params_of(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(m)) = v {
        for (k, val) in m {
            let s = match val {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(k.to_ascii_uppercase(), s);
        }
    }
    out
}

/// Build the input of `hook` from an envelope JSON document and a message.
pub fn test_input(
    hook: Hook,
    envelope: &Value,
    message: Option<Vec<u8>>,
) -> Result<HookInput, PolicyError> {
    let empty = Map::new();
    let env = envelope.as_object().unwrap_or(&empty);
    let conn_default = ConnectionInfo {
        id: crate::ids::new_id(),
        remoteip: "127.0.0.1".into(),
        remoteport: 40000,
        localip: "127.0.0.1".into(),
        localport: 25,
        serverid: "inbound".into(),
        ..Default::default()
    };
    let connection: ConnectionInfo = overlay(conn_default, env.get("connection"), "connection")?;
    let sender = str_of(env, "sender")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut recipients = Vec::new();
    if let Some(Value::Array(list)) = env.get("recipients") {
        for r in list {
            let ri = match r {
                Value::String(s) => {
                    let s = s.to_ascii_lowercase();
                    RecipientInfo {
                        address: Address::split(&s),
                        recipient: s,
                        transportid: "default".into(),
                        ..Default::default()
                    }
                }
                obj => {
                    let addr = obj
                        .get("recipient")
                        .and_then(|x| x.as_str())
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    let base = RecipientInfo {
                        address: Address::split(&addr),
                        recipient: addr,
                        transportid: "default".into(),
                        ..Default::default()
                    };
                    overlay(base, Some(obj), "recipients[]")?
                }
            };
            recipients.push(ri);
        }
    }
    let has_txn = env.contains_key("sender")
        || env.contains_key("recipients")
        || matches!(hook, Hook::Data | Hook::Headers | Hook::Eod | Hook::RcptTo);
    let transaction = has_txn.then(|| TransactionInfo {
        id: crate::ids::new_id(),
        senderaddress: Address::split(&sender),
        sender: sender.clone(),
        recipients: recipients.clone(),
        ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        open: true,
        ..Default::default()
    });
    let args = env
        .get("arguments")
        .and_then(|a| a.as_object())
        .cloned()
        .unwrap_or_default();
    let arg = |k: &str| str_of(&args, k);
    let arguments = match hook {
        Hook::Helo => HookArguments::Helo {
            verb: arg("verb")
                .or_else(|| connection.helo.as_ref().map(|h| h.verb.clone()))
                .unwrap_or_else(|| "EHLO".into()),
            host: arg("host")
                .or_else(|| connection.helo.as_ref().map(|h| h.host.clone()))
                .unwrap_or_else(|| "client.example".into()),
        },
        Hook::Auth => HookArguments::Auth {
            mechanism: arg("mechanism").unwrap_or_else(|| "PLAIN".into()),
            username: arg("username").unwrap_or_default(),
            password: arg("password").unwrap_or_default(),
        },
        Hook::MailFrom => HookArguments::MailFrom {
            address: arg("sender").unwrap_or_else(|| sender.clone()),
            params: params_of(args.get("params")),
        },
        Hook::RcptTo => HookArguments::RcptTo {
            address: arg("recipient")
                .or_else(|| recipients.last().map(|r| r.recipient.clone()))
                .unwrap_or_default(),
            params: params_of(args.get("params")),
        },
        Hook::Proxy => HookArguments::Proxy {
            command: arg("command").ok_or_else(|| {
                PolicyError::Input("the proxy hook needs arguments.command".into())
            })?,
        },
        Hook::Headers | Hook::Eod => {
            let message = message
                .ok_or_else(|| PolicyError::Input(format!("the {hook} hook needs a message")))?;
            HookArguments::Mail {
                message: message.into(),
                headers_only: hook == Hook::Headers,
            }
        }
        Hook::PreDelivery | Hook::PostDelivery => {
            let base = DeliveryInfo {
                queue_id: crate::ids::new_id(),
                sender: sender.clone(),
                recipient: recipients
                    .first()
                    .map(|r| r.recipient.clone())
                    .unwrap_or_default(),
                transportid: "default".into(),
                attempt: 1,
                ..Default::default()
            };
            HookArguments::Delivery(overlay(base, env.get("delivery"), "delivery")?)
        }
        Hook::Connect | Hook::Data | Hook::Disconnect => HookArguments::None,
    };
    Ok(HookInput {
        connection,
        transaction,
        arguments,
        context: env.get("context").cloned().unwrap_or(Value::Null),
    })
}

/// Compile the configured scripts and run `hook` once.
pub async fn test_script(
    cfg: &Config,
    hook: Hook,
    message: Option<Vec<u8>>,
    envelope: &Value,
) -> Result<HookOutcome, PolicyError> {
    let engine = PolicyEngine::load(cfg)?;
    let input = test_input(hook, envelope, message)?;
    Ok(engine.run(hook, input).await)
}

/// The outcome as one JSON document (messages shown by size and sha256).
pub fn outcome_json(o: &HookOutcome) -> Value {
    let verdict = match &o.verdict {
        HookVerdict::Pass { command, next } => {
            json!({"verdict": "Pass", "command": command, "next": next})
        }
        HookVerdict::Reply {
            reply,
            disconnect,
            next,
        } => {
            json!({"verdict": "Reply", "reply": reply.render(true), "disconnect": disconnect, "next": next})
        }
        HookVerdict::Accept { reply, rewrite, .. } => json!({
            "verdict": "Accept",
            "reply": reply.render(true),
            "host": rewrite.host,
            "sender": rewrite.sender,
            "recipient": rewrite.recipient,
            "transportid": rewrite.transportid,
        }),
        HookVerdict::Reject { reply, disconnect } => {
            json!({"verdict": "Reject", "reply": reply.render(true), "disconnect": disconnect})
        }
        HookVerdict::Defer { reply, disconnect } => {
            json!({"verdict": "Defer", "reply": reply.render(true), "disconnect": disconnect})
        }
    };
    let queued: Vec<Value> = o
        .queued
        .iter()
        .map(|q| {
            json!({
                "queue_id": q.queue_id,
                "sender": q.sender,
                "recipient": q.recipient,
                "transportid": q.transportid,
                "metadata": q.metadata,
                "hold": q.hold,
                "jobid": q.jobid,
                "delay": q.delay.map(|d| d.as_secs_f64()),
                "dsn": q.dsn,
                "size": q.message.len(),
                "sha256": super::api::sha256::hex(&q.message),
            })
        })
        .collect();
    let mut out = verdict;
    if let Value::Object(m) = &mut out {
        m.insert("context".into(), o.context.clone());
        m.insert("queued".into(), Value::Array(queued));
        m.insert(
            "history".into(),
            serde_json::to_value(&o.history).unwrap_or(Value::Null),
        );
        m.insert("transportid".into(), json!(o.transportid));
        m.insert("error".into(), json!(o.error));
    }
    out
}
