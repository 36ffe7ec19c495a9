//! A permission decision: what answers one `can_use_tool` request of the CLI, however it was made
//! (the host's `canUseTool`, a user's `respondToPermission`, forwarded through the store, a
//! session's always-allow rule, a timeout). Built once, from whichever source, into
//! [`Decision`]; turned into the CLI's answer in one place ([`Decision::to_cli`]).
//!
//! The CLI's `control_response` for `can_use_tool` (CLI 2.1.331, `--permission-prompt-tool=stdio`):
//! `{ behavior: 'allow', updatedInput, updatedPermissions? }` (the CLI runs the tool with
//! `updatedInput`, so an allow always carries the input) or `{ behavior: 'deny', message,
//! interrupt? }` (`interrupt` also ends the turn).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The answer to one permission request. Serialised (the store's inbox carries it between
/// managers) as `{ behavior: 'allow', updatedInput?, remember? }` or `{ behavior: 'deny', message,
/// interrupt? }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "behavior", rename_all = "lowercase")]
pub enum Decision {
  Allow {
    /// The tool's input to run with instead of the one asked about.
    #[serde(rename = "updatedInput", default, skip_serializing_if = "Option::is_none")]
    updated_input: Option<Value>,
    /// Permission updates for the CLI. Only a host's own `canUseTool` may return them; a user's
    /// answer never carries any (`respondToPermission` refuses the field).
    #[serde(rename = "updatedPermissions", default, skip_serializing_if = "Option::is_none")]
    updated_permissions: Option<Value>,
    /// Allow later requests of the session that match this one without asking (a rule the
    /// manager keeps: see `sessions::permissions`). Never sent to the CLI.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    remember: bool,
  },
  Deny {
    message: String,
    /// Also end the turn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    interrupt: bool,
  },
}

impl Decision {
  /// A plain allow of the input as asked.
  pub fn allow() -> Decision {
    Decision::Allow { updated_input: None, updated_permissions: None, remember: false }
  }

  /// A deny with `message`.
  pub fn deny(message: impl Into<String>) -> Decision {
    Decision::Deny { message: message.into(), interrupt: false }
  }

  /// What a host's `canUseTool` returned: anything but a clear allow or deny is a deny. An allow's
  /// `updatedInput` must be an object and its `updatedPermissions` an array, else they are left
  /// out; `remember: 'session'` asks for an always-allow rule.
  pub fn from_callback(v: &Value) -> Decision {
    match v.get("behavior").and_then(Value::as_str) {
      Some("allow") => Decision::Allow {
        updated_input: v.get("updatedInput").filter(|u| u.is_object()).cloned(),
        updated_permissions: v.get("updatedPermissions").filter(|p| p.is_array()).cloned(),
        remember: v.get("remember").and_then(Value::as_str) == Some("session"),
      },
      Some("deny") => Decision::Deny {
        message: v.get("message").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or("denied").to_owned(),
        interrupt: v.get("interrupt").and_then(Value::as_bool) == Some(true),
      },
      _ => Decision::deny("the permission callback returned neither allow nor deny"),
    }
  }

  /// What another manager left in the store's inbox (its [`Serialize`] form); unreadable text
  /// denies.
  pub fn from_stored(text: &str) -> Decision {
    serde_json::from_str(text).unwrap_or_else(|_| Decision::deny("the forwarded answer could not be read"))
  }

  /// The stored form (see [`Self::from_stored`]).
  pub fn to_stored(&self) -> String {
    serde_json::to_string(self).unwrap_or_default()
  }

  /// Whether this is an allow that asks for an always-allow rule.
  pub fn remember(&self) -> bool {
    matches!(self, Decision::Allow { remember: true, .. })
  }

  /// The CLI's answer to the request whose input was `original_input`.
  pub fn to_cli(&self, original_input: &Value) -> Value {
    match self {
      Decision::Allow { updated_input, updated_permissions, .. } => {
        let mut a = json!({ "behavior": "allow", "updatedInput": updated_input.clone().unwrap_or_else(|| original_input.clone()) });
        if let Some(p) = updated_permissions {
          a["updatedPermissions"] = p.clone();
        }
        a
      }
      Decision::Deny { message, interrupt } => {
        let mut d = json!({ "behavior": "deny", "message": message });
        if *interrupt {
          d["interrupt"] = json!(true);
        }
        d
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn callback_answers_are_normalised_for_the_cli() {
    let input = json!({ "file_path": "/a" });
    let cli = |v: Value| Decision::from_callback(&v).to_cli(&input);
    assert_eq!(cli(json!({ "behavior": "allow" })), json!({ "behavior": "allow", "updatedInput": input }));
    assert_eq!(
      cli(json!({ "behavior": "allow", "updatedInput": { "file_path": "/b" }, "updatedPermissions": [] })),
      json!({ "behavior": "allow", "updatedInput": { "file_path": "/b" }, "updatedPermissions": [] })
    );
    // Not an object / not an array: left out.
    assert_eq!(
      cli(json!({ "behavior": "allow", "updatedInput": [1], "updatedPermissions": {} })),
      json!({ "behavior": "allow", "updatedInput": input })
    );
    assert_eq!(
      cli(json!({ "behavior": "deny", "message": "no", "interrupt": true })),
      json!({ "behavior": "deny", "message": "no", "interrupt": true })
    );
    assert_eq!(cli(json!({ "behavior": "deny", "message": "" })), json!({ "behavior": "deny", "message": "denied" }));
    assert_eq!(cli(json!({ "behavior": "maybe" }))["behavior"], "deny");
    assert_eq!(cli(json!(null))["behavior"], "deny");
    // `remember` is the manager's, never the CLI's.
    let remembered = Decision::from_callback(&json!({ "behavior": "allow", "remember": "session" }));
    assert!(remembered.remember());
    assert_eq!(remembered.to_cli(&input), json!({ "behavior": "allow", "updatedInput": input }));
    assert!(!Decision::from_callback(&json!({ "behavior": "allow", "remember": true })).remember());
  }

  #[test]
  fn the_stored_form_round_trips_and_keeps_the_old_shape() {
    for d in [
      Decision::allow(),
      Decision::Allow { updated_input: Some(json!({ "x": 1 })), updated_permissions: None, remember: true },
      Decision::deny("no"),
      Decision::Deny { message: "stop".into(), interrupt: true },
    ] {
      assert_eq!(Decision::from_stored(&d.to_stored()), d);
    }
    assert_eq!(Decision::allow().to_stored(), r#"{"behavior":"allow"}"#);
    assert_eq!(Decision::from_stored(r#"{"behavior":"allow"}"#), Decision::allow());
    assert_eq!(Decision::from_stored(r#"{"behavior":"deny","message":"m"}"#), Decision::deny("m"));
    assert!(matches!(Decision::from_stored("not json"), Decision::Deny { .. }));
    assert!(matches!(Decision::from_stored(r#"{"behavior":"maybe"}"#), Decision::Deny { .. }));
  }
}
