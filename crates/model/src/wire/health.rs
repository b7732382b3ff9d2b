//! `GET /health` and `GET /health/active`: what an aggregator says of itself to anyone who asks
//! (the proxy routes on it; the harness waits on it).

use serde::{Deserialize, Serialize};

/// An aggregator's role, as `/health` and the status name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Standby,
    Starting,
    Active,
    Fenced,
    Maintenance,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Starting => "starting",
            Role::Active => "active",
            Role::Fenced => "fenced",
            Role::Maintenance => "maintenance",
        }
    }
}

/// The body of `/health` (200 while the process runs) and `/health/active` (200 only on the
/// ready active that may acknowledge now, else 503 with the same body).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    pub node: String,
    pub role: Role,
    pub epoch: u64,
    /// The active services can ingest and answer queries.
    pub ready: bool,
    pub advertise: String,
    pub version: String,
    /// How long the node has had its role.
    pub role_seconds: f64,
    pub uptime_seconds: u64,
    /// Why the node fenced itself, while it is fenced.
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_as_written_and_older_bodies_still_parse() {
        for role in [Role::Standby, Role::Starting, Role::Active, Role::Fenced, Role::Maintenance] {
            let text = serde_json::to_string(&role).unwrap();
            assert_eq!(text, format!("\"{}\"", role.name()));
            assert_eq!(serde_json::from_str::<Role>(&text).unwrap(), role);
        }
        let h: Health = serde_json::from_str(r#"{"node":"da1","role":"active","epoch":3,"ready":true}"#).unwrap();
        assert_eq!((h.node.as_str(), h.role, h.epoch, h.ready), ("da1", Role::Active, 3, true));
    }
}
