//! `cargo xtask testbed`: a real Ironic (standalone, fake hardware) on
//! loopback with nodes ready to deploy, and the `nova-compute` harness that
//! drives the real nova Ironic driver, for trying leakmon by hand. Runs
//! until Ctrl-C, then stops Ironic by PID.

use std::{sync::atomic::Ordering, time::Duration};

use tests::testbed::{Ironic, NovaCompute, Testbed};

use crate::{
    demo::{STOP, catch_interrupt},
    util::{root_dir, step},
};

pub fn run(ip: &str, tls: bool, nodes: usize) -> anyhow::Result<()> {
    step("test bed: Ironic and nova venvs, TLS material, schemas");
    let bed = Testbed::install();
    let dir = root_dir().join(".cache/testbed/run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    step(&format!(
        "Ironic on {ip}:6385 ({})",
        if tls { "HTTPS" } else { "HTTP" }
    ));
    let ironic = Ironic::start(&bed, &dir, ip, tls);
    println!(
        "    serving {} (pid {}), log in {}",
        ironic.url,
        ironic.pid(),
        dir.join("ironic").display()
    );
    step(&format!(
        "enrolling {nodes} fake-hardware node(s) (about 8 s each)"
    ));
    let uuids = ironic.enroll(&bed, nodes);
    for uuid in &uuids {
        println!("    {uuid}  available");
    }
    let harness = NovaCompute::command(&bed, &dir, &ironic);
    let mut line = harness.get_program().to_string_lossy().into_owned();
    for arg in harness.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    step("ready");
    println!("    the nova-compute harness (comm nova-compute, the real nova Ironic driver):");
    println!("      {line}");
    println!("    then type: nodes | spawn NODE | power_off|power_on|reboot|destroy INSTANCE | exit");
    println!("    and watch it with: leakmon run   (another terminal: leakmon calls --pid PID)");
    println!("\n    Ctrl-C stops Ironic.");
    catch_interrupt()?;
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping Ironic (pid {})", ironic.pid());
    drop(ironic);
    Ok(())
}
