//! What an Ironic API request is, from its method and path (the patterns of
//! ../shared/reference/nova-ironic.md), and which node or instance it names.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    VersionDiscovery,
    NodeList,
    NodeGet,
    InstanceLookup,
    NodePatch,
    ProvisionState,
    PowerState,
    Validate,
    VifList,
    VifAttach,
    VifDetach,
    ConsoleGet,
    ConsoleSet,
    InjectNmi,
    Ports,
    Portgroups,
    VolumeConnectors,
    VolumeTargets,
    Unknown,
}

impl CallKind {
    pub fn name(self) -> &'static str {
        match self {
            CallKind::VersionDiscovery => "version_discovery",
            CallKind::NodeList => "node_list",
            CallKind::NodeGet => "node_get",
            CallKind::InstanceLookup => "instance_lookup",
            CallKind::NodePatch => "node_patch",
            CallKind::ProvisionState => "provision_state",
            CallKind::PowerState => "power_state",
            CallKind::Validate => "validate",
            CallKind::VifList => "vif_list",
            CallKind::VifAttach => "vif_attach",
            CallKind::VifDetach => "vif_detach",
            CallKind::ConsoleGet => "console_get",
            CallKind::ConsoleSet => "console_set",
            CallKind::InjectNmi => "inject_nmi",
            CallKind::Ports => "ports",
            CallKind::Portgroups => "portgroups",
            CallKind::VolumeConnectors => "volume_connectors",
            CallKind::VolumeTargets => "volume_targets",
            CallKind::Unknown => "unknown",
        }
    }

    /// State changes nova waits for with a poll loop.
    pub fn starts_a_wait(self) -> bool {
        matches!(
            self,
            CallKind::ProvisionState | CallKind::PowerState | CallKind::ConsoleSet
        )
    }

    /// The calls nova's wait loops repeat.
    pub fn is_poll(self) -> bool {
        matches!(
            self,
            CallKind::InstanceLookup | CallKind::NodeGet | CallKind::ConsoleGet
        )
    }
}

/// A classified request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    pub kind: CallKind,
    pub node: Option<String>,
    pub instance: Option<String>,
    /// The path with identifiers replaced (`/v1/nodes/{node}/states/power`): low cardinality.
    pub pattern: String,
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

pub fn classify(method: &str, path: &str) -> Classified {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let node = |s: &str| Some(s.to_string());
    let result = |kind, node: Option<String>, instance: Option<String>, pattern: &str| Classified {
        kind,
        node,
        instance,
        pattern: pattern.to_string(),
    };
    let by_node = query_value(query, "node")
        .or_else(|| query_value(query, "node_uuid"))
        .map(str::to_string);
    match (method, segments.as_slice()) {
        ("GET", []) | ("GET", ["v1"]) => result(CallKind::VersionDiscovery, None, None, path),
        ("GET", ["v1", "nodes"]) | ("GET", ["v1", "nodes", "detail"]) => {
            match query_value(query, "instance_uuid") {
                Some(instance) => result(
                    CallKind::InstanceLookup,
                    None,
                    node(instance),
                    "/v1/nodes?instance_uuid={instance}",
                ),
                None => result(CallKind::NodeList, None, None, "/v1/nodes"),
            }
        }
        ("GET", ["v1", "nodes", id]) => result(CallKind::NodeGet, node(id), None, "/v1/nodes/{node}"),
        ("PATCH", ["v1", "nodes", id]) => result(CallKind::NodePatch, node(id), None, "/v1/nodes/{node}"),
        ("GET", ["v1", "nodes", id, "validate"]) => {
            result(CallKind::Validate, node(id), None, "/v1/nodes/{node}/validate")
        }
        ("PUT", ["v1", "nodes", id, "states", "provision"]) => result(
            CallKind::ProvisionState,
            node(id),
            None,
            "/v1/nodes/{node}/states/provision",
        ),
        ("PUT", ["v1", "nodes", id, "states", "power"]) => result(
            CallKind::PowerState,
            node(id),
            None,
            "/v1/nodes/{node}/states/power",
        ),
        ("GET", ["v1", "nodes", id, "states", "console"]) => result(
            CallKind::ConsoleGet,
            node(id),
            None,
            "/v1/nodes/{node}/states/console",
        ),
        ("PUT", ["v1", "nodes", id, "states", "console"]) => result(
            CallKind::ConsoleSet,
            node(id),
            None,
            "/v1/nodes/{node}/states/console",
        ),
        ("PUT", ["v1", "nodes", id, "management", "inject_nmi"]) => result(
            CallKind::InjectNmi,
            node(id),
            None,
            "/v1/nodes/{node}/management/inject_nmi",
        ),
        ("GET", ["v1", "nodes", id, "vifs"]) => {
            result(CallKind::VifList, node(id), None, "/v1/nodes/{node}/vifs")
        }
        ("POST", ["v1", "nodes", id, "vifs"]) => {
            result(CallKind::VifAttach, node(id), None, "/v1/nodes/{node}/vifs")
        }
        ("DELETE", ["v1", "nodes", id, "vifs", _]) => {
            result(CallKind::VifDetach, node(id), None, "/v1/nodes/{node}/vifs/{vif}")
        }
        (_, ["v1", "ports", ..]) => result(CallKind::Ports, by_node, None, "/v1/ports"),
        (_, ["v1", "portgroups", ..]) => result(CallKind::Portgroups, by_node, None, "/v1/portgroups"),
        (_, ["v1", "volume", "connectors", ..]) => {
            result(CallKind::VolumeConnectors, by_node, None, "/v1/volume/connectors")
        }
        (_, ["v1", "volume", "targets", ..]) => {
            result(CallKind::VolumeTargets, by_node, None, "/v1/volume/targets")
        }
        _ => result(CallKind::Unknown, None, None, "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &str = "fields=uuid%2Cpower_state%2Cprovision_state%2Cinstance_uuid";
    const NODE: &str = "1ea5a24b-6b22-4891-834f-e44fa7929a51";
    const INSTANCE: &str = "e17e0e2f-1627-42a2-8a99-c5040f62bdd4";

    fn kind(method: &str, path: &str) -> CallKind {
        classify(method, path).kind
    }

    #[test]
    fn every_call_nova_makes() {
        assert_eq!(kind("GET", "/"), CallKind::VersionDiscovery);
        assert_eq!(kind("GET", "/v1/"), CallKind::VersionDiscovery);
        assert_eq!(kind("GET", &format!("/v1/nodes?{F}")), CallKind::NodeList);
        assert_eq!(
            kind("GET", &format!("/v1/nodes?{F}&limit=50&marker={NODE}")),
            CallKind::NodeList
        );
        let lookup = classify("GET", &format!("/v1/nodes?{F}&instance_uuid={INSTANCE}"));
        assert_eq!(
            (lookup.kind, lookup.instance.as_deref()),
            (CallKind::InstanceLookup, Some(INSTANCE))
        );
        let get = classify("GET", &format!("/v1/nodes/{NODE}?{F}"));
        assert_eq!((get.kind, get.node.as_deref()), (CallKind::NodeGet, Some(NODE)));
        assert_eq!(get.pattern, "/v1/nodes/{node}");
        assert_eq!(kind("PATCH", &format!("/v1/nodes/{NODE}")), CallKind::NodePatch);
        assert_eq!(
            kind("GET", &format!("/v1/nodes/{NODE}/validate")),
            CallKind::Validate
        );
        assert_eq!(
            kind("PUT", &format!("/v1/nodes/{NODE}/states/provision")),
            CallKind::ProvisionState
        );
        assert_eq!(
            kind("PUT", &format!("/v1/nodes/{NODE}/states/power")),
            CallKind::PowerState
        );
        assert_eq!(
            kind("PUT", &format!("/v1/nodes/{NODE}/management/inject_nmi")),
            CallKind::InjectNmi
        );
        assert_eq!(
            kind("POST", &format!("/v1/nodes/{NODE}/vifs")),
            CallKind::VifAttach
        );
        assert_eq!(
            kind("DELETE", &format!("/v1/nodes/{NODE}/vifs/port-1")),
            CallKind::VifDetach
        );
        assert_eq!(
            kind("GET", &format!("/v1/nodes/{NODE}/states/console")),
            CallKind::ConsoleGet
        );
        assert_eq!(
            kind("PUT", &format!("/v1/nodes/{NODE}/states/console")),
            CallKind::ConsoleSet
        );
        let ports = classify("GET", &format!("/v1/ports/detail?node={NODE}"));
        assert_eq!((ports.kind, ports.node.as_deref()), (CallKind::Ports, Some(NODE)));
        assert_eq!(
            kind("GET", &format!("/v1/portgroups/detail?node={NODE}")),
            CallKind::Portgroups
        );
        assert_eq!(
            kind("GET", &format!("/v1/volume/connectors?node={NODE}")),
            CallKind::VolumeConnectors
        );
        assert_eq!(kind("POST", "/v1/volume/targets"), CallKind::VolumeTargets);
    }

    #[test]
    fn other_services_and_odd_paths_are_unknown() {
        assert_eq!(kind("POST", "/v3/auth/tokens"), CallKind::Unknown);
        assert_eq!(kind("GET", "/v1/nodes/a/b/c/d/e"), CallKind::Unknown);
        assert_eq!(kind("BREW", "/v1/nodes"), CallKind::Unknown);
        assert_eq!(classify("GET", "").kind, CallKind::VersionDiscovery);
    }

    #[test]
    fn polls_and_waits() {
        assert!(CallKind::InstanceLookup.is_poll() && CallKind::NodeGet.is_poll());
        assert!(CallKind::ProvisionState.starts_a_wait() && !CallKind::NodeList.starts_a_wait());
        for kind in [
            CallKind::VersionDiscovery,
            CallKind::VolumeTargets,
            CallKind::Unknown,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }
}
