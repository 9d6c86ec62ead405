//! The minion's identity: the id the agent reports, decided the way Salt
//! decides it (`id`), from Salt's configuration files (`salt_config`, read
//! as Salt's YAML loader reads them, `salt_yaml`, with Python's `glob`),
//! else from the host's names (`host_names`).

pub mod glob;
pub mod host_names;
pub mod id;
pub mod salt_config;
pub mod salt_yaml;
