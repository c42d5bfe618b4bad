//! `cpushare image inspect`: what a seller would boot from an ISO, checked
//! on the buyer's machine before any money moves.

use anyhow::Context;
use cpushare_vmm::iso::{inspect, BootSource, IsoReader};
use serde::Serialize;
use std::path::Path;

/// What `inspect` reports.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// The ISO file.
    pub file: String,
    /// Content id (`K-...` short form).
    pub id: String,
    /// Full SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether a seller could boot it.
    pub bootable: bool,
    /// Kernel path inside the ISO.
    pub kernel: Option<String>,
    /// Kernel size.
    pub kernel_size: Option<u64>,
    /// Initrds inside the ISO, in load order.
    pub initrds: Vec<InitrdFile>,
    /// Command line the guest gets (the seller frames the ISO's with
    /// `panic=-1` and `console=ttyS0`).
    pub cmdline: Option<String>,
    /// Which config it came from.
    pub source: Option<String>,
    /// Why it cannot boot, if it cannot.
    pub error: Option<String>,
}

/// One initrd of an [`Inspection`].
#[derive(Debug, Serialize)]
pub struct InitrdFile {
    /// Path inside the ISO.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// Inspects the ISO at `path`.
pub fn inspect_iso(path: &Path) -> anyhow::Result<Inspection> {
    let (id, size) = crate::upload::identify(path)?;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let plan = IsoReader::new(std::io::BufReader::new(file)).and_then(|mut r| inspect(&mut r));
    let mut out = Inspection {
        file: path.display().to_string(),
        id: id.short(),
        sha256: id.hex(),
        size,
        bootable: plan.is_ok(),
        kernel: None,
        kernel_size: None,
        initrds: Vec::new(),
        cmdline: None,
        source: None,
        error: None,
    };
    match plan {
        Ok(p) => {
            out.kernel = Some(p.kernel.path.clone());
            out.kernel_size = Some(p.kernel.size);
            out.initrds = p
                .initrds
                .iter()
                .map(|i| InitrdFile {
                    path: i.path.clone(),
                    size: i.size,
                })
                .collect();
            out.cmdline = Some(cpushare_vmm::iso::guest_cmdline(&p.cmdline));
            out.source = Some(match p.source {
                BootSource::CpushareToml => "/cpushare.toml".to_string(),
                BootSource::Syslinux(path) => format!("syslinux {path}"),
                BootSource::Grub(path) => format!("grub {path}"),
            });
        }
        Err(e) => out.error = Some(e.to_string()),
    }
    Ok(out)
}

/// Prints an inspection for a person.
pub fn print(i: &Inspection) {
    println!("image    {} ({} bytes, {})", i.file, i.size, i.id);
    match &i.error {
        Some(e) => println!("bootable no: {e}"),
        None => {
            println!("config   {}", i.source.as_deref().unwrap_or("?"));
            println!(
                "kernel   {} ({} bytes)",
                i.kernel.as_deref().unwrap_or("?"),
                i.kernel_size.unwrap_or(0)
            );
            if i.initrds.is_empty() {
                println!("initrd   none");
            }
            for rd in &i.initrds {
                println!("initrd   {} ({} bytes)", rd.path, rd.size);
            }
            println!("cmdline  {}", i.cmdline.as_deref().unwrap_or(""));
            println!(
                "bootable yes: `cpushare run {}` boots it on a seller",
                i.file
            );
        }
    }
}
