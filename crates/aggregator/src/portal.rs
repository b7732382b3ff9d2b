//! The portal's narrow view of the aggregator (see [`pollux_portal::Source`]).

use crate::api::{ApiState, Queries};
use crate::status::StatusSources;
use pollux_model::wire::SystemStatus;
use pollux_model::Catalog;
use pollux_repository::Repository;
use std::sync::Arc;

pub struct PortalSource {
    status: Arc<StatusSources>,
    queries: Arc<Queries>,
}

impl PortalSource {
    pub fn new(api: &ApiState) -> PortalSource {
        PortalSource { status: api.status.clone(), queries: api.queries.clone() }
    }
}

impl pollux_portal::Source for PortalSource {
    fn status(&self) -> SystemStatus {
        self.status.gather()
    }

    fn active(&self) -> Result<(), String> {
        let node = &self.queries.node;
        if node.active_epoch().is_some() {
            return Ok(());
        }
        let to = node.active_url().map_or(String::new(), |u| format!(" The active is at {u}."));
        Err(format!("This aggregator is {}, not the ready active.{to}", node.state().role.name()))
    }

    fn repository(&self) -> Arc<dyn Repository> {
        self.queries.repo.clone()
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.queries.families.catalog()
    }
}
