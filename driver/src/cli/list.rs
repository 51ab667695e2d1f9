//! `xdriver list`: the cells a spec would run, with skip reasons; JSON for
//! tools; a GitHub Actions matrix so each cell can run on its own machine.

use serde_json::json;

use super::args::{ListArgs, Shard};
use super::error::CliError;
use crate::exit;
use crate::spec::Cell;

/// The cells of shard `s`: runnable cells are dealt round-robin in id
/// order, then skipped cells the same way, so every shard gets its share of
/// real work and each cell lands in exactly one shard.
pub(super) fn shard_of<T>(cells: Vec<(Cell, T)>, s: Option<Shard>) -> Vec<(Cell, T)> {
    let Some(s) = s else { return cells };
    let mut indexed: Vec<(usize, (Cell, T))> = cells.into_iter().enumerate().collect();
    indexed.sort_by_key(|(_, (c, _))| (c.image.is_err(), c.id()));
    let mut keep: Vec<(usize, (Cell, T))> =
        indexed.into_iter().enumerate().filter(|(k, _)| k % s.count == s.index - 1).map(|(_, x)| x).collect();
    // Back in the spec's order.
    keep.sort_by_key(|(i, _)| *i);
    keep.into_iter().map(|(_, x)| x).collect()
}

/// The default `--jobs`: one cell per host CPU, as far as free memory
/// allows VMs of `mem_mib` (plus QEMU's own ~300 MiB) while leaving 1 GiB.
pub fn default_jobs(mem_mib: u32) -> (usize, String) {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kib| kib / 1024);
    let by_mem = avail.map(|a| (a.saturating_sub(1024) / (u64::from(mem_mib) + 300)) as usize);
    let jobs = by_mem.map_or(cpus, |m| cpus.min(m)).max(1);
    let why = match avail {
        Some(a) => format!("{cpus} CPUs, {a} MiB available at {} MiB per VM", mem_mib + 300),
        None => format!("{cpus} CPUs"),
    };
    (jobs, why)
}

/// Cells at once by default: the VMs [`default_jobs`] allows, divided by
/// the VMs of the largest cell (a cell of N nodes runs N), at least 1.
pub fn default_cell_jobs(mem_mib: u32, cells: &[(crate::spec::Cell, Option<crate::runner::Prepared>)]) -> (usize, String) {
    let (vms, why) = default_jobs(mem_mib);
    let per_cell = cells.iter().filter_map(|(_, p)| p.as_ref().map(|p| p.nodes.len())).max().unwrap_or(1);
    if per_cell > 1 {
        ((vms / per_cell).max(1), format!("{why}; {vms} VMs at a time, {per_cell} per cell"))
    } else {
        (vms, why)
    }
}

pub(super) fn main(args: ListArgs) -> Result<i32, CliError> {
    let (spec, cells) = super::plan::load(&args.cells)?;
    let cells = shard_of(cells, args.shard);
    if args.github_matrix {
        let include: Vec<_> = cells
            .iter()
            .filter(|(c, _)| c.image.is_ok())
            .map(|(c, _)| {
                json!({
                    "cell": c.id(),
                    "name": c.dir_name(),
                    "os": c.os.to_string(),
                    "manager": c.manager.to_string(),
                    "profile": c.profile.to_string(),
                    "image": c.image.as_ref().ok(),
                })
            })
            .collect();
        println!("{}", json!({ "include": include }));
        return Ok(exit::SUCCESS);
    }
    if args.json {
        let v: Vec<_> = cells
            .iter()
            .map(|(c, p)| {
                json!({
                    "cell": c.id(),
                    "os": c.os.to_string(),
                    "manager": c.manager.to_string(),
                    "profile": c.profile.to_string(),
                    "runs": c.image.is_ok(),
                    "image": c.image.as_ref().ok(),
                    "skip_reason": c.image.as_ref().err(),
                    "steps": p.as_ref().map(|p| p.steps.len()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "spec": spec.file.name, "cells": v })).expect("json"));
        return Ok(exit::SUCCESS);
    }
    let runnable = cells.iter().filter(|(c, _)| c.image.is_ok()).count();
    for (c, p) in &cells {
        match (&c.image, p) {
            (Ok(img), Some(p)) => println!("RUN   {:<36} {img} ({} steps)", c.id(), p.steps.len()),
            (Ok(img), None) => println!("RUN   {:<36} {img}", c.id()),
            (Err(why), _) => println!("SKIP  {:<36} {why}", c.id()),
        }
    }
    let (jobs, why) = default_cell_jobs(spec.file.guest.memory(), &cells);
    println!(
        "{}: {} cells, {runnable} to run, {} skipped{}; default --jobs here: {jobs} ({why})",
        spec.file.name,
        cells.len(),
        cells.len() - runnable,
        args.shard.map(|s| format!(" (shard {s})")).unwrap_or_default()
    );
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdriver_guests::{Manager, Os, ProfileKind};

    fn cells() -> Vec<(Cell, usize)> {
        let mut v = Vec::new();
        for (i, m) in [Manager::SYSTEMD, Manager::SYSVINIT, Manager::OPENRC, Manager::RUNIT, Manager::S6].into_iter().enumerate() {
            for p in [ProfileKind::Privileged, ProfileKind::Unprivileged] {
                let image = if m == Manager::OPENRC && p == ProfileKind::Unprivileged { Err("no".to_string()) } else { Ok("img".to_string()) };
                v.push((Cell { os: Os::DEBIAN_12, manager: m, profile: p, image }, i));
            }
        }
        v
    }

    #[test]
    fn shards_partition_the_cells_and_share_the_runnable_ones() {
        let all: Vec<String> = cells().into_iter().map(|(c, _)| c.id()).collect();
        for n in 1..=4 {
            let mut seen = Vec::new();
            let mut runnable = Vec::new();
            for i in 1..=n {
                let part = shard_of(cells(), Some(Shard { index: i, count: n }));
                // Same answer every time.
                assert_eq!(
                    part.iter().map(|(c, _)| c.id()).collect::<Vec<_>>(),
                    shard_of(cells(), Some(Shard { index: i, count: n })).iter().map(|(c, _)| c.id()).collect::<Vec<_>>()
                );
                runnable.push(part.iter().filter(|(c, _)| c.image.is_ok()).count());
                seen.extend(part.into_iter().map(|(c, _)| c.id()));
            }
            seen.sort();
            let mut expected = all.clone();
            expected.sort();
            assert_eq!(seen, expected, "{n} shards cover every cell once");
            let (lo, hi) = (runnable.iter().min().copied().unwrap_or(0), runnable.iter().max().copied().unwrap_or(0));
            assert!(hi - lo <= 1, "{n} shards: runnable cells per shard {runnable:?}");
        }
        assert_eq!(shard_of(cells(), None).len(), all.len());
    }

    #[test]
    fn default_jobs_is_at_least_one() {
        let (j, why) = default_jobs(1024);
        assert!(j >= 1 && why.contains("CPUs"), "{j} {why}");
        // A VM larger than any host's memory still gets one job.
        assert_eq!(default_jobs(u32::MAX / 2).0, 1);
    }
}
