//! Settings of differentiation beyond the common server ones, from `CRM_*`
//! environment variables with defaults:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `CRM_COST_PER_INTERACTION_MINOR` | see [`default_costs`] | `channel=minor,…` overrides of the cost per interaction that seed the first tier policy |
//! | `CRM_VALUE_CURRENCY` | `EUR` | currency of the first tier policy |
//! | `CRM_TIER_RECOMPUTE_EVENTS` | `1000` | recompute tier boundaries once this many interaction events were applied, in a background job that looks every second (0: never) |
//! | `CRM_TIER_RECOMPUTE_SECS` | `3600` | and this often (0: never) |
//! | `CRM_VALUE_REFIT_SECS` | `86400` | refit the lifetime-value model this often, activating it if it converged (0: only by `FitValueModel`) |
//!
//! The first two only seed tier policy version 1 when the store has none;
//! after that `UpdateTierPolicy` is the source of truth.

use std::time::Duration;

use crm_runtime::config::ConfigError;

#[cfg(doc)]
use crate::domain::value::default_costs;
use crate::domain::value::{Policy, channel_of_key};

/// Differentiation's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSettings {
    /// The policy stored as version 1 in an empty store.
    pub initial_policy: Policy,
    /// Recompute boundaries after this many interaction events (0: never).
    pub recompute_events: u64,
    /// Recompute boundaries this often (zero: never).
    pub recompute_interval: Duration,
    /// Refit the value model this often (zero: only when asked).
    pub refit_interval: Duration,
}

impl Default for ValueSettings {
    fn default() -> Self {
        ValueSettings {
            initial_policy: Policy::default(),
            recompute_events: 1000,
            recompute_interval: Duration::from_secs(3600),
            refit_interval: Duration::from_secs(86_400),
        }
    }
}

impl ValueSettings {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From a variable lookup (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut s = ValueSettings::default();
        if let Some(raw) = get("CRM_COST_PER_INTERACTION_MINOR") {
            for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let invalid = |detail: String| ConfigError::Invalid { what: "CRM_COST_PER_INTERACTION_MINOR", detail };
                let (k, v) = pair.split_once('=').ok_or_else(|| invalid(format!("`{pair}` is not channel=minor")))?;
                let channel = channel_of_key(k.trim()).ok_or_else(|| invalid(format!("unknown channel `{k}`")))?;
                let cost: i64 = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|c| *c >= 0)
                    .ok_or_else(|| invalid(format!("`{v}` is not a non-negative whole number")))?;
                s.initial_policy.cost_per_interaction.insert(channel, cost);
            }
        }
        if let Some(c) = get("CRM_VALUE_CURRENCY") {
            if !crm_runtime::validate::is_currency_code(&c) {
                return Err(ConfigError::Invalid {
                    what: "CRM_VALUE_CURRENCY",
                    detail: format!("`{c}` is not an ISO 4217 code"),
                });
            }
            s.initial_policy.currency = c;
        }
        if let Some(n) = get("CRM_TIER_RECOMPUTE_EVENTS") {
            s.recompute_events = n
                .trim()
                .parse()
                .map_err(|e| ConfigError::Invalid { what: "CRM_TIER_RECOMPUTE_EVENTS", detail: format!("{e}") })?;
        }
        if let Some(n) = get("CRM_TIER_RECOMPUTE_SECS") {
            let secs: u64 = n
                .trim()
                .parse()
                .map_err(|e| ConfigError::Invalid { what: "CRM_TIER_RECOMPUTE_SECS", detail: format!("{e}") })?;
            s.recompute_interval = Duration::from_secs(secs);
        }
        if let Some(n) = get("CRM_VALUE_REFIT_SECS") {
            let secs: u64 = n
                .trim()
                .parse()
                .map_err(|e| ConfigError::Invalid { what: "CRM_VALUE_REFIT_SECS", detail: format!("{e}") })?;
            s.refit_interval = Duration::from_secs(secs);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crm_proto::common::v1::Channel;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<ValueSettings, ConfigError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        ValueSettings::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_need_no_variables() {
        let s = from(&[]).unwrap();
        assert_eq!(s, ValueSettings::default());
        assert_eq!(s.initial_policy.cost_per_interaction.get(&(Channel::CallCentre as i32)), Some(&400));
    }

    #[test]
    fn variables_override_the_defaults() {
        let s = from(&[
            ("CRM_COST_PER_INTERACTION_MINOR", "call_centre=650, web=0"),
            ("CRM_VALUE_CURRENCY", "USD"),
            ("CRM_TIER_RECOMPUTE_EVENTS", "10"),
            ("CRM_TIER_RECOMPUTE_SECS", "0"),
            ("CRM_VALUE_REFIT_SECS", "600"),
        ])
        .unwrap();
        assert_eq!(s.initial_policy.cost_per_interaction.get(&(Channel::CallCentre as i32)), Some(&650));
        assert_eq!(s.initial_policy.cost_per_interaction.get(&(Channel::Web as i32)), Some(&0));
        assert_eq!(s.initial_policy.cost_per_interaction.get(&(Channel::Phone as i32)), Some(&300));
        assert_eq!(s.initial_policy.currency, "USD");
        assert_eq!((s.recompute_events, s.recompute_interval), (10, Duration::ZERO));
        assert_eq!(s.refit_interval, Duration::from_secs(600));
    }

    #[test]
    fn bad_variables_are_refused() {
        for bad in [
            ("CRM_COST_PER_INTERACTION_MINOR", "fax=3"),
            ("CRM_COST_PER_INTERACTION_MINOR", "web=-1"),
            ("CRM_COST_PER_INTERACTION_MINOR", "web"),
            ("CRM_VALUE_CURRENCY", "eur"),
            ("CRM_TIER_RECOMPUTE_EVENTS", "many"),
            ("CRM_TIER_RECOMPUTE_SECS", "-1"),
            ("CRM_VALUE_REFIT_SECS", "daily"),
        ] {
            assert!(from(&[bad]).is_err(), "{bad:?}");
        }
    }
}
