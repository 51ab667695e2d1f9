//! Vlans between VMs, for real: two guests of different Debian releases
//! and inits (Debian 12 systemd and Debian 13 sysvinit, each restored from
//! its RAM snapshot) on one vde_switch whose sockets are in a temporary
//! directory; each starts with its NIC (hot-plugged as the restored guest
//! resumes) and gets its NixOS-driver address in its start's set-up.
//! They reach each other by name and over IPv4 and IPv6; a cut link (QMP `set_link`, the NixOS driver's
//! `block()`) stops the traffic, and the user-mode NIC (`restrict=on`) does
//! not carry it instead; restoring the link brings it back; the switch
//! ends with its handle.

use std::time::Duration;

use xdriver::vm::vlan::{Nic, Switch, VlanPort};
use xdriver::vm::Channel;
use xdriver_guests::Init;

async fn sh(vm: &xdriver::vm::Vm, cmd: &str) -> (i32, String) {
    let out = vm.exec(Channel::Backdoor, cmd, &[], Duration::from_secs(60), None).await.expect("the backdoor answers");
    (out.status, format!("{}{}", out.stdout_str(), out.stderr_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_releases_on_one_vlan_reach_each_other_until_the_link_is_cut() {
    let work = xdriver_tests::workdir();
    let switch = Switch::start(1, work.path()).expect("vde_switch starts");
    let switch_pid = switch.pid() as i32;
    let (na, nb) = (Nic { vlan: 1, node: 1 }, Nic { vlan: 1, node: 2 });
    // Each starts on the vlan with every node's name for its /etc/hosts
    // (the NIC plugged before the restored guest runs, configured in the
    // start's one set-up command).
    let hosts = vec![(std::net::IpAddr::V4(na.addr()), "node-a".to_string()), (std::net::IpAddr::V4(nb.addr()), "node-b".to_string())];
    let port = |nic: &Nic| VlanPort { nic: nic.clone(), sock: switch.sock().to_path_buf() };
    let mut a_cfg = xdriver_tests::config(Init::SYSTEMD, "vlan-a");
    a_cfg.ssh = false;
    a_cfg.vlans = vec![port(&na)];
    a_cfg.hosts = hosts.clone();
    let mut b_cfg = xdriver::vm::VmConfig::new("t-vlan-b-sysvinit", xdriver_tests::recipe_image("debian-13", Init::SYSVINIT));
    b_cfg.accel = xdriver::vm::qemu::Accel::Tcg;
    b_cfg.ssh = false;
    b_cfg.vlans = vec![port(&nb)];
    b_cfg.hosts = hosts.clone();
    let (a, b) = tokio::join!(xdriver_tests::start(a_cfg), xdriver_tests::start(b_cfg));
    let (_, out) = sh(&a, "grep -c node-b /etc/hosts").await;
    assert_eq!(out.trim(), "1", "the machines' names once in /etc/hosts: {out}");
    let ping = |to: std::net::Ipv4Addr| format!("busybox ping -c 1 -W 3 {to}");
    // Each reaches the other by name (/etc/hosts), over IPv4 and IPv6.

    let (code, out) = sh(&a, "busybox ping -c 1 -W 3 node-b").await;
    assert_eq!(code, 0, "a -> node-b over vlan 1: {out}");
    assert!(out.contains("192.168.1.2"), "{out}");
    let (code, out) = sh(&a, &format!("busybox ping -6 -c 1 -W 3 {}", nb.addr6())).await;
    assert_eq!(code, 0, "a -> b over vlan 1, IPv6: {out}");
    let (code, out) = sh(&b, &format!("{}; ip -o -4 addr show | grep -c 192.168.1.2/24", ping(na.addr()))).await;
    assert_eq!(code, 0, "b -> a over vlan 1: {out}");

    // b's link cut: nothing reaches it, not even through the user-mode NIC
    // (its default route), which is restrict=on.
    b.set_vlan_link(1, false).await.expect("set_link down");
    let (code, out) = sh(&a, &ping(nb.addr())).await;
    assert_ne!(code, 0, "a reached b with b's link cut: {out}");
    let (code, out) = sh(&b, &format!("ip route get {}; {}", na.addr(), ping(na.addr()))).await;
    assert_ne!(code, 0, "b reached a with its link cut: {out}");
    let (code, out) = sh(&b, &format!("ip link set $(ip -o link | awk -F': ' '/52:54:00:12:01:02/ {{print $2}}') down; ip route get {} | grep -o 'dev [a-z0-9]*'; {}", na.addr(), ping(na.addr()))).await;
    assert_ne!(code, 0, "b reached a over the user-mode NIC: {out}");
    assert!(out.contains("dev eth0"), "with the vlan NIC down the kernel routes 192.168.1.1 via the user-mode NIC (which must drop it): {out}");
    let (_, out) = sh(&b, "ip link set $(ip -o link | awk -F': ' '/52:54:00:12:01:02/ {print $2}') up").await;
    assert!(out.trim().is_empty(), "{out}");

    b.set_vlan_link(1, true).await.expect("set_link up");
    let mut back = false;
    for _ in 0..10 {
        if sh(&a, &ping(nb.addr())).await.0 == 0 {
            back = true;
            break;
        }
    }
    assert!(back, "a did not reach b after the link came back");

    a.quit().await;
    b.quit().await;
    drop(switch);
    assert!(!xdriver_tests::alive(switch_pid), "vde_switch {switch_pid} outlived its handle");
}
