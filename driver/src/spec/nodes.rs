//! The machines of a cell (`[nodes.NAME]`): each node's OS, manager,
//! profile, image, instances and vlans, worked out from the spec and the
//! cell. A spec without nodes has one node, `machine`, which is the cell.

use std::collections::BTreeSet;

use xdriver_guests::{Manager, Os, ProfileKind};

use super::error::{Locator, SpecError};
use super::load::Spec;
use super::matrix::{image_for, Cell};
use super::schema::SpecFile;

/// The highest vlan number (node *i* on vlan *v* is 192.168.*v*.*i*).
pub const MAX_VLAN: i64 = 254;

/// The most nodes a cell may have (their addresses' last byte).
pub const MAX_NODES: usize = 254;

/// Names a node cannot take: Python's keywords and the globals the test
/// script already has (docs/spec.md).
const RESERVED: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del", "elif", "else", "except",
    "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try",
    "while", "with", "yield", "machines", "start_all", "join_all", "subtest", "retry", "log", "t", "os", "serial_stdout_on",
    "serial_stdout_off", "Machine", "polling_condition", "driver", "vlans",
];

/// One machine of a cell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    /// Its name: a Python global in test scripts, its host name in every
    /// guest.
    pub name: String,
    /// Its number, from 1, in the order the file lists the nodes: its
    /// address on vlan *v* is 192.168.*v*.*index*.
    pub index: u32,
    /// Guest OS.
    pub os: Os,
    /// Manager.
    pub manager: Manager,
    /// Profile.
    pub profile: ProfileKind,
    /// The image it boots, or why it cannot run here.
    pub image: Result<String, String>,
    /// The instances it runs (a spec without nodes: all of them).
    pub instances: Option<Vec<String>>,
    /// The vlans it has a NIC on (none for a spec without nodes).
    pub vlans: Vec<u32>,
    /// Guest RAM (MiB), if the node sets it.
    pub memory_mib: Option<u32>,
    /// vCPUs, if the node sets it.
    pub cpus: Option<u32>,
}

/// Checks what can be checked of `[nodes]` without a cell: names, vlans,
/// instances, OS/manager/profile names.
pub fn check(file: &SpecFile, loc: &Locator) -> Result<(), SpecError> {
    if file.nodes.len() > MAX_NODES {
        return Err(loc.whole(format!("{} nodes: a cell has at most {MAX_NODES}", file.nodes.len())));
    }
    let mut placed = BTreeSet::new();
    for (name, def) in &file.nodes {
        let n = name.get_ref();
        let ident = n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            return Err(loc.at(name.span(), format!("node name `{n}` is not a Python identifier (test scripts use it as a variable): letters, digits and `_`, not starting with a digit")));
        }
        if RESERVED.contains(&n.as_str()) {
            return Err(loc.at(name.span(), format!("node name `{n}` is taken: it is a Python keyword or one of the test script's globals")));
        }
        let def = def.get_ref();
        if let Some(os) = &def.os {
            os.get_ref().parse::<Os>().map_err(|e| loc.at(os.span(), format!("node `{n}`: {e}")))?;
        }
        if let Some(m) = &def.manager {
            m.get_ref().parse::<Manager>().map_err(|e| loc.at(m.span(), format!("node `{n}`: {e}")))?;
        }
        if let Some(p) = &def.profile {
            p.get_ref().parse::<ProfileKind>().map_err(|e| loc.at(p.span(), format!("node `{n}`: {e}")))?;
        }
        if let Some(g) = &def.guest {
            g.check(loc)?;
        }
        let mut seen = BTreeSet::new();
        for v in def.vlans.iter().flatten() {
            if !(1..=MAX_VLAN).contains(v.get_ref()) {
                return Err(loc.at(v.span(), format!("node `{n}`: vlan {} is out of range (1 to {MAX_VLAN}: node i on vlan v is 192.168.v.i)", v.get_ref())));
            }
            if !seen.insert(*v.get_ref()) {
                return Err(loc.at(v.span(), format!("node `{n}`: vlan {} is listed twice", v.get_ref())));
            }
        }
        for i in def.instances.iter().flatten() {
            if !file.instances.keys().any(|k| k.get_ref() == i.get_ref()) {
                return Err(loc.at(i.span(), format!("node `{n}`: no instance `{}` in [instances]", i.get_ref())));
            }
            if !placed.insert(i.get_ref().clone()) {
                return Err(loc.at(i.span(), format!("node `{n}`: instance `{}` is placed on another node too", i.get_ref())));
            }
        }
    }
    Ok(())
}

impl Spec {
    /// The nodes of `cell`, in file order. Without `[nodes]`: one node,
    /// `machine`, the cell itself, on no vlan.
    pub fn nodes(&self, cell: &Cell) -> Vec<Node> {
        if self.file.nodes.is_empty() {
            return vec![Node {
                name: "machine".into(),
                index: 1,
                os: cell.os,
                manager: cell.manager,
                profile: cell.profile,
                image: cell.image.clone(),
                instances: None,
                vlans: Vec::new(),
                memory_mib: None,
                cpus: None,
            }];
        }
        let mut defs: Vec<_> = self.file.nodes.iter().collect();
        defs.sort_by_key(|(name, _)| name.span().start);
        defs.iter()
            .enumerate()
            .map(|(i, (name, def))| {
                let def = def.get_ref();
                // Checked at load (`check`): these parse.
                let os = def.os.as_ref().and_then(|o| o.get_ref().parse().ok()).unwrap_or(cell.os);
                let manager = def.manager.as_ref().and_then(|m| m.get_ref().parse().ok()).unwrap_or(cell.manager);
                let profile = def.profile.as_ref().and_then(|p| p.get_ref().parse().ok()).unwrap_or(cell.profile);
                let image = if (os, manager, profile) == (cell.os, cell.manager, cell.profile) {
                    cell.image.clone()
                } else {
                    image_for(os, manager, profile)
                };
                Node {
                    name: name.get_ref().clone(),
                    index: i as u32 + 1,
                    os,
                    manager,
                    profile,
                    image,
                    instances: def.instances.as_ref().map(|v| v.iter().map(|s| s.get_ref().clone()).collect()),
                    vlans: def.vlans.as_ref().map(|v| v.iter().map(|n| *n.get_ref() as u32).collect()).unwrap_or_else(|| vec![1]),
                    memory_mib: def.memory_mib,
                    cpus: def.cpus,
                }
            })
            .collect()
    }
}

impl Spec {
    /// The `[guest]` of the node named `node`: its own
    /// (`[nodes.NAME.guest]`), else the spec's.
    pub fn guest_of(&self, node: &str) -> &super::guest::GuestDef {
        self.file.nodes.iter().find(|(k, _)| k.get_ref() == node).and_then(|(_, d)| d.get_ref().guest.as_ref()).unwrap_or(&self.file.guest)
    }
}

/// Which node runs `instance`: the node that names it, else the first.
pub fn node_of<'a>(nodes: &'a [Node], instance: &str) -> &'a Node {
    nodes.iter().find(|n| n.instances.as_ref().is_some_and(|v| v.iter().any(|i| i == instance))).unwrap_or(&nodes[0])
}
