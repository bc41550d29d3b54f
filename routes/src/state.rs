//! Live colors, weights, pauses and maintenance set at run time (by the
//! admin API). They are persisted by the proxy and win over the config file
//! when compiling.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Run-time overrides per service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveState {
    /// By service name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceState>,
    /// By site name (its first host, as [`crate::table::Site::name`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sites: BTreeMap<String, SiteState>,
}

/// One site's run-time state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteState {
    /// Requests to the site get the maintenance page.
    #[serde(default, skip_serializing_if = "is_false")]
    pub maintenance: bool,
}

/// One service's run-time choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The live color.
    pub live: String,
    /// Canary weights per color; `None` sends everything to `live`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, u32>>,
    /// New requests are held at the edge until a resume.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// Requests get the maintenance page.
    #[serde(default, skip_serializing_if = "is_false")]
    pub maintenance: bool,
}

impl ServiceState {
    /// The state with `live` live and no weights, otherwise as `self`
    /// (a pause or maintenance outlives a flip).
    pub fn flipped(&self, live: &str) -> ServiceState {
        ServiceState {
            live: live.to_string(),
            weights: None,
            ..self.clone()
        }
    }

    /// A service's first state: `live` live, nothing else set.
    pub fn live(live: &str) -> ServiceState {
        ServiceState {
            live: live.to_string(),
            weights: None,
            paused: false,
            maintenance: false,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
