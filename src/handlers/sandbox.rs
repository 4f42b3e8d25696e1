//! `sandbox.*` tasks: `sandbox.provision` and `sandbox.delete`, the same provisioning engine as
//! teams with the sandbox template (`sandbox-<slug>-api`), locking `sandbox:<slug>`.

use std::sync::Arc;

use super::Registry;
use crate::services::Services;
use crate::templates::Kind;

/// Registers the `sandbox.*` handlers.
pub fn register(registry: &mut Registry, services: &Arc<Services>) {
    super::team::register_kind(registry, services, Kind::Sandbox);
}
