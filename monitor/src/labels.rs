//! Names for the endpoints nova-compute talks to (nova-ironic.md): by port
//! by default, by exact `host:port` (or `*:port`) from the configuration.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

/// Well-known OpenStack ports and what listens there.
pub const DEFAULT_PORTS: [(u16, &str); 11] = [
    (6385, "ironic-api"),
    (5000, "keystone"),
    (35357, "keystone"),
    (8778, "placement"),
    (8780, "placement"),
    (9696, "neutron"),
    (9292, "glance"),
    (8776, "cinder"),
    (5672, "rabbitmq"),
    (5671, "rabbitmq"),
    (11211, "memcached"),
];

#[derive(Clone, Debug)]
pub struct Labels {
    exact: HashMap<SocketAddr, String>,
    ports: HashMap<u16, String>,
}

impl Default for Labels {
    fn default() -> Self {
        Labels {
            exact: HashMap::new(),
            ports: DEFAULT_PORTS.iter().map(|(p, l)| (*p, l.to_string())).collect(),
        }
    }
}

/// Parses `ip:port`, `[ipv6]:port` or `*:port`; `None` host means any host.
pub fn parse_endpoint(key: &str) -> Result<(Option<IpAddr>, u16), String> {
    if let Some(port) = key.strip_prefix("*:") {
        let port = port
            .parse()
            .map_err(|_| format!("`{key}`: the port is not a number"))?;
        return Ok((None, port));
    }
    let addr: SocketAddr = key
        .parse()
        .map_err(|_| format!("`{key}` is not host:port (an IP address, [IPv6] or *, then a port)"))?;
    Ok((Some(addr.ip()), addr.port()))
}

impl Labels {
    /// The defaults with the configured entries on top.
    pub fn new(configured: &BTreeMap<String, String>) -> Result<Labels, String> {
        let mut labels = Labels::default();
        for (key, label) in configured {
            if label.is_empty() {
                return Err(format!("`{key}`: the label is empty"));
            }
            match parse_endpoint(key)? {
                (Some(ip), port) => labels.exact.insert(SocketAddr::new(ip, port), label.clone()),
                (None, port) => labels.ports.insert(port, label.clone()),
            };
        }
        Ok(labels)
    }

    pub fn label(&self, remote: &SocketAddr) -> Option<&str> {
        let canonical = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        self.exact
            .get(&canonical)
            .or_else(|| self.ports.get(&remote.port()))
            .map(String::as_str)
    }

    /// The label of an `ip:port` string (as sock_diag gives it).
    pub fn label_of(&self, remote: &str) -> Option<&str> {
        // Without `host:port` entries only the port matters: a snapshot asks
        // once per socket, and parsing the address cost more than the rest.
        if self.exact.is_empty() {
            let (_, port) = remote.rsplit_once(':')?;
            return self.ports.get(&port.parse().ok()?).map(String::as_str);
        }
        self.label(&remote.parse().ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_label_by_port() {
        let labels = Labels::default();
        assert_eq!(labels.label_of("127.0.0.1:6385"), Some("ironic-api"));
        assert_eq!(labels.label_of("[::1]:5672"), Some("rabbitmq"));
        assert_eq!(labels.label_of("10.0.0.1:35357"), Some("keystone"));
        assert_eq!(labels.label_of("10.0.0.1:1234"), None);
        assert_eq!(labels.label_of("not an address"), None);
    }

    #[test]
    fn configured_entries_win_and_map_v4_in_v6() {
        let configured = BTreeMap::from([
            ("192.0.2.10:6385".to_string(), "ironic-api-tls-proxy".to_string()),
            ("*:8774".to_string(), "nova-api".to_string()),
            ("*:6385".to_string(), "bare-metal".to_string()),
        ]);
        let labels = Labels::new(&configured).unwrap();
        assert_eq!(labels.label_of("192.0.2.10:6385"), Some("ironic-api-tls-proxy"));
        assert_eq!(
            labels.label_of("[::ffff:192.0.2.10]:6385"),
            Some("ironic-api-tls-proxy")
        );
        assert_eq!(labels.label_of("192.0.2.11:6385"), Some("bare-metal"));
        assert_eq!(labels.label_of("192.0.2.11:8774"), Some("nova-api"));
    }

    #[test]
    fn bad_entries_say_why() {
        for (key, label) in [("ironic:6385", "x"), ("*:port", "x"), ("10.0.0.1:6385", "")] {
            let configured = BTreeMap::from([(key.to_string(), label.to_string())]);
            let err = Labels::new(&configured).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }
}
